"""A durable-subscription consumer process for the crash and sharing tests.

    python -m tests._durable_consumer URL STREAM NAME LOG [--ack-wait S] [--hang-after N]

Consumes the durable subscription NAME of store STREAM and appends to LOG, one
``os.write`` per line on an ``O_APPEND`` descriptor (a SIGKILL loses no line written, and
several processes may share one file):

- ``ready <pid>`` once the subscription's consumer exists;
- ``handled <position> <attempt> <pid>`` when a delivery reaches the handler;
- ``acked <position> <pid>`` once the server has confirmed its ack.

With ``--hang-after N`` the handler acks N deliveries, then hangs on the next one (after
logging it as handled), as a stuck handler would, until the process is killed. SIGTERM
closes the subscription and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from datetime import timedelta

import nats

from aether.store import JetStreamEventStore


def _line(fd: int, text: str) -> None:
    os.write(fd, (text + "\n").encode())


async def _consume(args: argparse.Namespace) -> None:
    fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()
    nc = await nats.connect(args.url, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
    try:
        store = await JetStreamEventStore.open(nc, args.stream)
        sub = store.durable_subscription(args.name, ack_wait=timedelta(seconds=args.ack_wait))
        async with sub:
            _line(fd, f"ready {pid}")
            acked = 0
            async for delivery in sub:
                _line(fd, f"handled {delivery.position} {delivery.attempt} {pid}")
                if args.hang_after is not None and acked >= args.hang_after:
                    await asyncio.Event().wait()  # a stuck handler: never settles
                await delivery.ack()
                acked += 1
                _line(fd, f"acked {delivery.position} {pid}")
    finally:
        await nc.close()
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("stream")
    parser.add_argument("name")
    parser.add_argument("log")
    parser.add_argument("--ack-wait", type=float, default=30.0)
    parser.add_argument("--hang-after", type=int, default=None)
    args = parser.parse_args()

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await _consume(args)

    asyncio.run(run())


if __name__ == "__main__":
    main()
