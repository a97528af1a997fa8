"""Tiny stdlib HTTP client for the nats-server monitoring endpoint."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

__all__ = ["get_json", "get_status"]

# Never route loopback monitoring requests through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get_status(url: str, timeout: float = 0.5) -> int | None:
    """HTTP status code of ``GET url``, or ``None`` if nothing answered."""
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)
    except (OSError, ValueError):
        return None


def get_json(url: str, timeout: float = 1.0) -> dict[str, Any] | None:
    """Decoded JSON object of a successful ``GET url``, or ``None`` on any failure."""
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            data = json.loads(resp.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
