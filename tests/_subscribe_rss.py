"""Peak RSS of a subscription's catch-up, measured in a process of its own.

``python -m tests._subscribe_rss <url> <stream> <events>`` subscribes to *stream* from the
start, reads *events* events without keeping them, and prints a JSON object:
``rss_before`` (bytes, once the store is open), ``peak`` (the RSS high-water mark during
the catch-up, reset just before it where Linux allows, else the process's lifetime
peak), ``events`` and ``peak_buffered`` (the most messages the subscription buffered).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys

import nats

from aether.store import JetStreamConfig, JetStreamEventStore


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


async def main(url: str, stream: str, events: int) -> dict[str, int | None]:
    nc = await nats.connect(url)
    try:
        store = await JetStreamEventStore.attach(nc, stream, JetStreamConfig())
        rss_before = _status_bytes("VmRSS")
        was_reset = _reset_peak()
        count = 0
        async with store.subscribe() as sub:
            async for _ in sub:
                count += 1
                if count == events:
                    break
        peak = (
            _status_bytes("VmHWM")
            if was_reset
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        )
        buffered: int = sub._feed.peak_buffered  # type: ignore[attr-defined]
        return {
            "rss_before": rss_before,
            "peak": peak,
            "events": count,
            "peak_buffered": buffered,
        }
    finally:
        await nc.close()


if __name__ == "__main__":
    url, stream, events = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print(json.dumps(asyncio.run(main(url, stream, events))))
