"""How commands print: rich tables for people, JSON lines for programs, notes on stderr.

Results go to stdout; notes (truncation, skipped messages, "listening") go to stderr, so
``--json`` output can be piped as it is. Off a terminal, tables are not wrapped at 80
columns (unless ``$COLUMNS`` says so) and carry no colour.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = [
    "compact_json",
    "echo_json",
    "format_time",
    "human_bytes",
    "make_table",
    "note",
    "print_table",
    "stdout_console",
]

_PIPE_WIDTH = 200


def stdout_console(*, stderr: bool = False) -> Console:
    """A console on the current stdout, or stderr (click's test runner swaps them, so
    not cached)."""
    console = Console(highlight=False, stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = _PIPE_WIDTH
    return console


def note(message: str) -> None:
    """One line for the user on stderr, outside the command's output."""
    click.echo(message, err=True)


def echo_json(value: bytes | dict[str, Any]) -> None:
    """One JSON value as one line on stdout (bytes are already-encoded JSON)."""
    text = value.decode() if isinstance(value, bytes) else json.dumps(value, ensure_ascii=False)
    click.echo(text)


def make_table(*columns: str, right: Iterable[str] = ()) -> Table:
    """A plain table with *columns*; those named in *right* are right-aligned numbers."""
    aligned = set(right)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name in columns:
        table.add_column(name, justify="right" if name in aligned else "left", overflow="fold")
    return table


def print_table(table: Table, rows: Iterable[Sequence[str | Text]]) -> None:
    for row in rows:
        table.add_row(*row)
    stdout_console().print(table)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC to the millisecond: ``2025-01-31T12:00:00.123Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def compact_json(value: Any) -> str:
    """Compact one-line JSON, unicode kept readable."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def human_bytes(size: int) -> str:
    """``512 B``, ``1.5 KiB``, ``12.0 MiB`` ..."""
    amount = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{int(amount)} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")
