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
from benchmarks.memory import proc_status_bytes, reset_peak_rss


async def main(url: str, stream: str, events: int) -> dict[str, int | None]:
    nc = await nats.connect(url)
    try:
        store = await JetStreamEventStore.attach(nc, stream, JetStreamConfig())
        rss_before = proc_status_bytes("VmRSS")
        was_reset = reset_peak_rss()
        count = 0
        async with store.subscribe() as sub:
            async for _ in sub:
                count += 1
                if count == events:
                    break
        peak = (
            proc_status_bytes("VmHWM")
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
