"""The connection options (auth, token, TLS, environment) against servers that demand them."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import trustme
from click.testing import CliRunner

from aether.cli._connect import ConnectionSettings, connection_options
from aether.cli._errors import EXIT_UNREACHABLE, ConnectionConfigError
from aether.testing import NatsServer

from .test_cli_commands import NATS_ENV, UNREACHABLE, aether, assert_one_line_error, json_lines

USER, PASSWORD, TOKEN = "ann", "s3cret pass", "t0ken"


@pytest.fixture(autouse=True)
def _no_nats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connection settings come from each test's arguments, not the developer's shell."""
    for name in NATS_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def auth_server() -> Iterator[NatsServer]:
    config = f'authorization {{ user: {USER}, password: "{PASSWORD}" }}'
    with NatsServer(config=config) as server:
        yield server


@pytest.fixture(scope="module")
def token_server() -> Iterator[NatsServer]:
    with NatsServer(config=f'authorization {{ token: "{TOKEN}" }}') as server:
        yield server


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    root = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(root / "ca.pem", root / "cert.pem", root / "key.pem", root / "other.pem")
    ca.cert_pem.write_to_path(str(files.ca))
    issued.cert_chain_pems[0].write_to_path(str(files.cert))
    issued.private_key_pem.write_to_path(str(files.key))
    trustme.CA().cert_pem.write_to_path(str(files.other_ca))
    return files


@pytest.fixture(scope="module")
def tls_server(tls_files: TlsFiles) -> Iterator[NatsServer]:
    config = f'tls {{ cert_file: "{tls_files.cert}", key_file: "{tls_files.key}" }}'
    with NatsServer(config=config) as server:
        yield server


def _round_trip(url: str, *auth: str, env: dict[str, str] | None = None) -> None:
    """append (creating the stream) then read back through the same options."""
    appended = aether("append", "acc", "Opened", "--create", *auth, url=url, env=env)
    assert appended.exit_code == 0, appended.output
    events = aether("events", "acc", "--json", *auth, url=url, env=env)
    assert [e["eventType"] for e in json_lines(events)][-1] == "Opened"
    listed = aether("streams", "--json", *auth, url=url, env=env)
    assert "events" in [row["name"] for row in json_lines(listed)]


# -- user and password ------------------------------------------------------------------------


def test_user_and_password(auth_server: NatsServer) -> None:
    _round_trip(auth_server.url, "--user", USER, "--password", PASSWORD)


def test_user_and_password_from_the_environment(auth_server: NatsServer) -> None:
    _round_trip(auth_server.url, env={"NATS_USER": USER, "NATS_PASSWORD": PASSWORD})


@pytest.mark.parametrize(
    "auth", [(), ("--user", USER, "--password", "wrong"), ("--user", "bob", "--password", PASSWORD)]
)
def test_wrong_or_missing_credentials_are_refused(
    auth_server: NatsServer, auth: tuple[str, ...]
) -> None:
    result = aether("streams", *auth, url=auth_server.url)
    assert_one_line_error(
        result, EXIT_UNREACHABLE, f"cannot connect to NATS at {auth_server.url}", "authorization"
    )


def test_password_without_user_is_a_usage_error() -> None:
    result = aether("streams", "--password", "x", url=UNREACHABLE)
    assert result.exit_code == 2
    assert "--password needs --user" in result.stderr


def test_token_and_user_together_are_a_usage_error() -> None:
    result = aether("streams", "--token", "t", "--user", "u", url=UNREACHABLE)
    assert result.exit_code == 2
    assert "either --token or --user" in result.stderr


# -- token ------------------------------------------------------------------------------------


def test_token(token_server: NatsServer) -> None:
    _round_trip(token_server.url, "--token", TOKEN)
    _round_trip(token_server.url, env={"NATS_TOKEN": TOKEN})


def test_wrong_token_is_refused(token_server: NatsServer) -> None:
    result = aether("streams", "--token", "nope", url=token_server.url)
    assert_one_line_error(result, EXIT_UNREACHABLE, "authorization violation")


# -- TLS --------------------------------------------------------------------------------------


def test_tls_with_the_servers_ca(tls_server: NatsServer, tls_files: TlsFiles) -> None:
    _round_trip(tls_server.url, "--tls-ca", str(tls_files.ca))
    _round_trip(tls_server.url, env={"NATS_CA": str(tls_files.ca)})


@pytest.mark.parametrize("ca", ["system", "other"])
def test_tls_server_certificate_is_verified(
    tls_server: NatsServer, tls_files: TlsFiles, ca: str
) -> None:
    args = ["--tls-ca", str(tls_files.other_ca)] if ca == "other" else []
    result = aether("streams", *args, url=tls_server.url)
    assert_one_line_error(result, EXIT_UNREACHABLE, "certificate verify failed")


def test_bad_tls_files_are_one_line_errors(tls_files: TlsFiles, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    cases = [
        (["--tls-ca", str(missing)], "cannot load TLS CA file", "no such file"),
        (["--tls-ca", str(tls_files.key)], "cannot load TLS CA file", str(tls_files.key)),
        (
            ["--tls-cert", str(tls_files.ca), "--tls-key", str(tls_files.key)],
            "cannot load TLS client certificate",
            "",
        ),
        (["--tls-cert", str(missing)], "cannot load TLS client certificate", "no such file"),
        (["--tls-key", str(tls_files.key)], "--tls-key needs --tls-cert", ""),
        (["--creds", str(missing)], "cannot read credentials file", str(missing)),
    ]
    for args, message, detail in cases:
        result = aether("streams", *args, url=UNREACHABLE)
        assert_one_line_error(result, EXIT_UNREACHABLE, message, detail)


# -- the settings object --------------------------------------------------------------------


def test_settings_keep_secrets_out_of_repr() -> None:
    settings = ConnectionSettings(url="nats://x", user="u", password="pw-123", token="tk-456")
    assert "pw-123" not in repr(settings)
    assert "tk-456" not in repr(settings)
    assert settings.with_url("nats://y") == dataclasses.replace(settings, url="nats://y")
    assert ConnectionSettings().server_url == "nats://127.0.0.1:4222"


def test_connect_kwargs(tls_files: TlsFiles) -> None:
    assert ConnectionSettings().connect_kwargs() == {}
    kwargs = ConnectionSettings(user="u", password="p", tls_ca=str(tls_files.ca)).connect_kwargs()
    assert (kwargs["user"], kwargs["password"]) == ("u", "p")
    assert kwargs["tls"].verify_mode.name == "CERT_REQUIRED"
    assert kwargs["tls"].check_hostname
    assert ConnectionSettings(token="t").connect_kwargs() == {"token": "t"}
    with pytest.raises(ConnectionConfigError):
        ConnectionSettings(creds="/nonexistent/x.creds").connect_kwargs()


def test_connection_options_pass_one_settings_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ConnectionSettings] = []

    @click.command()
    @connection_options
    @click.option("--other", default="x")
    def probe(conn: ConnectionSettings, other: str) -> None:
        seen.append(conn)

    monkeypatch.setenv("NATS_URL", "nats://env:4222")
    monkeypatch.setenv("NATS_CERT", "/c.pem")
    result = CliRunner().invoke(probe, ["--user", "u", "--password", "p", "--other", "y"])
    assert result.exit_code == 0, result.output
    assert seen == [
        ConnectionSettings(url="nats://env:4222", user="u", password="p", tls_cert="/c.pem")
    ]


# -- the demo takes them too ----------------------------------------------------------------


@pytest.mark.slow
def test_demo_with_credentials(auth_server: NatsServer) -> None:
    env = {k: v for k, v in os.environ.items() if k not in NATS_ENV}
    env |= {"NATS_USER": USER, "NATS_PASSWORD": PASSWORD}
    args = ["demo", "--url", auth_server.url, "-p", "1", "-a", "2", "-n", "10"]
    result = subprocess.run(
        [sys.executable, "-m", "aether.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "audit: PASS" in result.stdout
    refused = subprocess.run(
        [sys.executable, "-m", "aether.cli", *args, "--password", "wrong"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert refused.returncode == EXIT_UNREACHABLE, refused.stdout + refused.stderr
    assert "authorization violation" in refused.stderr
