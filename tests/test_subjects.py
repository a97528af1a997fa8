"""The actor-id encoding and stream naming, fuzzed with hypothesis (no server needed)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aether import InvalidEventError
from aether.store._subjects import (
    MAX_REAL_NAME_LENGTH,
    MAX_STREAM_NAME_LENGTH,
    MAX_TOKEN_LENGTH,
    SNAPSHOTS_SUFFIX,
    check_stream_name,
    decode_actor_token,
    encode_actor_id,
    legacy_stream_name,
    parse_stream_name,
    real_stream_name,
)

TOKEN = re.compile(r"[A-Za-z0-9_-]+")
STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
ids = st.text(min_size=1, max_size=60) | st.sampled_from(["a.b", "*", ">", "a b", "_", "_2E"])


@settings(max_examples=3000)
@given(ids)
def test_encoding_is_reversible_and_subject_safe(actor_id: str) -> None:
    # Reversible implies injective: no two ids share a subject.
    token = encode_actor_id(actor_id)
    assert TOKEN.fullmatch(token)
    assert decode_actor_token(token) == actor_id


def test_readable_ids_stay_readable() -> None:
    assert encode_actor_id("order-42") == "order-42"
    assert encode_actor_id("6f1c0b9e-1e2a-4c1f-9a9e-2b7f1f0f3a11").count("_") == 0


def test_length_limit() -> None:
    encode_actor_id("a" * MAX_TOKEN_LENGTH)
    with pytest.raises(InvalidEventError):
        encode_actor_id("a" * (MAX_TOKEN_LENGTH + 1))


@pytest.mark.parametrize(
    ("namespace", "name", "expected"),
    [
        ("", "events", "events"),  # no namespace: unchanged, as in every older version
        ("", "my_events", "my_events"),
        ("tenant", "events", "tenant__events"),
        ("tenant-a", "bank", "tenant-a__bank"),
        ("acme", "prod_orders", "acme__prod_orders"),
        ("acme_prod", "orders", "acme_5Fprod__orders"),
        ("a.b", "x", "a_2Eb__x"),
        ("a_b", "x", "a_5Fb__x"),
        ("my tenant.eu*>", "events", "my_20tenant_2Eeu_2A_3E__events"),
        ("ünï", "orders", "_C3_BCn_C3_AF__orders"),
    ],
)
def test_stream_names(namespace: str, name: str, expected: str) -> None:
    assert real_stream_name(namespace, name) == expected
    assert parse_stream_name(expected) == (namespace, name)


def test_the_old_collisions_are_gone() -> None:
    # Both gave "acme_prod_orders" before; "a.b" and "a_b" were both sanitised to "a_b".
    assert real_stream_name("acme", "prod_orders") != real_stream_name("acme_prod", "orders")
    assert real_stream_name("a.b", "x") != real_stream_name("a_b", "x")
    assert real_stream_name("", "a_b") != real_stream_name("a", "b")


@pytest.mark.parametrize(
    "bad",
    ["", "a.b", "a b", "*", ">", "ä", "a__b", "__a", "a_", "x_snapshots", "_snapshots"],
)
def test_bad_stream_names(bad: str) -> None:
    with pytest.raises(ValueError):
        real_stream_name("", bad)
    with pytest.raises(ValueError):
        real_stream_name("ns", bad)


def test_names_fit_the_server_limit() -> None:
    longest = "a" * MAX_REAL_NAME_LENGTH
    assert real_stream_name("", longest) == longest
    assert len(longest + SNAPSHOTS_SUFFIX) == MAX_STREAM_NAME_LENGTH == 255
    with pytest.raises(ValueError, match="255"):
        real_stream_name("", longest + "a")
    with pytest.raises(ValueError, match="255"):
        real_stream_name("ü" * 40, "events")  # 240 characters escaped


@pytest.mark.parametrize(
    "name",
    [
        "events_snapshots",  # a snapshot stream
        "a__events_snapshots",
        "_41__x",  # "A" escaped: never produced
        "a_2e__x",  # lower-case hex
        "a_ZZ__x",
        "_C3__x",  # not UTF-8
        "a_b__x",  # "_" unescaped in the namespace
        "__x",
        "a.b",
    ],
)
def test_parse_refuses_names_the_encoding_never_makes(name: str) -> None:
    with pytest.raises(ValueError):
        parse_stream_name(name)


def test_legacy_names() -> None:
    assert legacy_stream_name("", "events") is None
    assert legacy_stream_name("acme", "prod_orders") == "acme_prod_orders"
    assert legacy_stream_name("acme_prod", "orders") == "acme_prod_orders"
    assert legacy_stream_name("my tenant.eu", "x") == "my_tenant_eu_x"


def _valid(name: str) -> bool:
    try:
        check_stream_name(name)
    except ValueError:
        return False
    return True


namespaces = st.text(max_size=30) | st.sampled_from(["", "_", "__", "a_", "_5F", "a__b", "-"])
names = st.from_regex(r"[A-Za-z0-9_-]{1,30}", fullmatch=True).filter(_valid) | st.sampled_from(
    ["snapshots", "a_snapshot", "snapshots_a", "_a", "-_-"]
)


@settings(max_examples=2000)
@given(namespaces, names)
def test_stream_names_round_trip(namespace: str, name: str) -> None:
    # parse_stream_name inverts real_stream_name, so the mapping is injective: no two
    # (namespace, name) pairs share an events stream.
    real = real_stream_name(namespace, name)
    assert STREAM_NAME.fullmatch(real)
    assert parse_stream_name(real) == (namespace, name)
    # And no pair's events stream is another pair's snapshot stream: parse_stream_name
    # accepts exactly the names real_stream_name makes, and refuses every snapshot name.
    with pytest.raises(ValueError):
        parse_stream_name(real + SNAPSHOTS_SUFFIX)


@settings(max_examples=1000)
@given(namespaces, names, namespaces, names)
def test_distinct_pairs_never_share_a_stream(ns1: str, n1: str, ns2: str, n2: str) -> None:
    real1, real2 = real_stream_name(ns1, n1), real_stream_name(ns2, n2)
    if (ns1, n1) != (ns2, n2):
        assert real1 != real2
    assert real1 != real2 + SNAPSHOTS_SUFFIX
    assert real1 + SNAPSHOTS_SUFFIX != real2


@settings(max_examples=1000)
@given(st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True))
def test_parse_accepts_only_what_the_encoding_makes(real: str) -> None:
    try:
        namespace, name = parse_stream_name(real)
    except ValueError:
        return
    assert real_stream_name(namespace, name) == real
