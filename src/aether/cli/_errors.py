"""One-line errors with documented exit codes, and the one place aether errors become them.

A user's mistake or a server's refusal is reported as ``Error: <one line>`` on stderr with
an exit code that scripts can test; never as a traceback. Commands raise the
:class:`CliError` subclasses below for what they detect themselves; every other aether
exception is translated by :func:`translate_errors`, which the ``aether`` group wraps
around every command.

Exit codes:

====  ==========================================================================
0     success
1     the command failed (any other JetStream or NATS error; the server has no JetStream;
      an existing stream aether cannot use; the demo's audit failed)
2     usage error: an unknown option, a missing argument, a bad option value (click's
      own code: ``append --version 0``, ``-s bad.name``, ``--url http://...``)
3     not found: stream, actor or snapshot
4     conflict: a version conflict (the message names the actor's current version), or
      ``stream create`` of a stream that exists
5     invalid input: ``--data`` not JSON or not an object, an event the store refuses,
      a store configuration it refuses
6     no answer from JetStream in time: the outcome of a write is unknown
7     cannot connect: server unreachable, authorization refused, unusable TLS or
      credentials files; or (``tail``) the connection was lost and not regained
====  ==========================================================================
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click
import nats.errors

from aether.errors import (
    AetherError,
    InvalidEventError,
    JetStreamError,
    JetStreamNotEnabledError,
    StoreUnavailableError,
    StreamExistsError,
    StreamNotFoundError,
    UnsuitableStreamError,
    VersionConflictError,
)
from aether.store.config import InvalidConfigError

__all__ = [
    "EXIT_CONFLICT",
    "EXIT_FAILURE",
    "EXIT_INVALID",
    "EXIT_NOT_FOUND",
    "EXIT_UNAVAILABLE",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "CliError",
    "ConflictError",
    "ConnectionConfigError",
    "InvalidInputError",
    "NotFoundError",
    "ServerUnreachableError",
    "UnavailableError",
    "translate_errors",
]

EXIT_FAILURE = 1
#: click's own exit code for usage errors (click.UsageError, click.BadParameter).
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_INVALID = 5
EXIT_UNAVAILABLE = 6
EXIT_UNREACHABLE = 7

EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  the command failed (also: no JetStream, a stream aether cannot use)
  2  usage error (unknown option, bad option value or argument)
  3  not found: stream, actor or snapshot
  4  conflict: version conflict; the stream exists (stream create)
  5  invalid input (--data, event, store configuration)
  6  no answer from JetStream in time (a write's outcome is unknown)
  7  cannot connect (unreachable, refused, bad TLS/creds files), or connection lost
"""


class CliError(click.ClickException):
    """A failure reported as one line (``Error: ...``); exit code 1 unless a subclass says."""

    exit_code = EXIT_FAILURE


class ServerUnreachableError(CliError):
    """No usable NATS server (unreachable, refused us, could not be started, or the
    connection was lost for good): exit 7."""

    exit_code = EXIT_UNREACHABLE


class ConnectionConfigError(ServerUnreachableError):
    """The connection settings themselves are unusable (TLS or credentials files): exit 7."""


class NotFoundError(CliError):
    """A stream, actor or snapshot does not exist: exit 3."""

    exit_code = EXIT_NOT_FOUND


class ConflictError(CliError):
    """Optimistic concurrency failed (the message has the current version): exit 4."""

    exit_code = EXIT_CONFLICT


class InvalidInputError(CliError):
    """The input cannot become a valid event: exit 5."""

    exit_code = EXIT_INVALID


class UnavailableError(CliError):
    """JetStream gave no answer in time; a write's outcome is unknown: exit 6."""

    exit_code = EXIT_UNAVAILABLE


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn aether and nats-py exceptions escaping a command into one-line CliErrors."""
    try:
        yield
    except VersionConflictError as exc:
        raise ConflictError(str(exc)) from None
    except (InvalidEventError, InvalidConfigError) as exc:
        raise InvalidInputError(str(exc)) from None
    except StoreUnavailableError as exc:
        raise UnavailableError(f"no answer from JetStream: {exc}") from None
    except StreamNotFoundError as exc:
        raise NotFoundError(
            f"stream {exc.stream_name!r} not found (`aether streams` lists the event streams)"
        ) from None
    except StreamExistsError as exc:
        raise ConflictError(
            f"stream {exc.stream_name!r} already exists (`aether stream info` shows it)"
        ) from None
    except UnsuitableStreamError as exc:
        if exc.setting == "subjects":
            raise CliError(
                f"stream {exc.stream_name!r} is not an aether event stream: {exc.reason}"
            ) from None
        if exc.setting == "metadata":
            raise CliError(
                f"stream {exc.stream_name!r} is another store's: {exc.reason} (name it "
                "with the --namespace and --stream `aether streams` shows)"
            ) from None
        raise CliError(f"{exc} (the stream is left as it is)") from None
    except JetStreamNotEnabledError as exc:
        raise CliError(f"JetStream is not available: {exc}") from None
    except JetStreamError as exc:
        raise CliError(f"JetStream refused: {exc.description}") from None
    except AetherError as exc:
        raise CliError(str(exc)) from None
    except nats.errors.Error as exc:
        raise CliError(f"NATS error: {str(exc).removeprefix('nats: ')}") from None
