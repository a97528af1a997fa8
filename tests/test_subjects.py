"""The actor-id encoding and stream naming, fuzzed with hypothesis (no server needed)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aether import InvalidEventError
from aether.store._subjects import (
    MAX_TOKEN_LENGTH,
    decode_actor_token,
    encode_actor_id,
    real_stream_name,
)

TOKEN = re.compile(r"[A-Za-z0-9_-]+")
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
        ("", "events", "events"),
        ("tenant", "events", "tenant_events"),
        ("my tenant.eu*>", "events", "my_tenant_eu___events"),
        ("ünï", "orders", "_n__orders"),
    ],
)
def test_stream_names(namespace: str, name: str, expected: str) -> None:
    assert real_stream_name(namespace, name) == expected


@pytest.mark.parametrize("bad", ["", "a.b", "a b", "*", ">", "ä"])
def test_bad_stream_names(bad: str) -> None:
    with pytest.raises(ValueError):
        real_stream_name("", bad)
