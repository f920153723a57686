"""A broker in its own process, for tests that SIGKILL or SIGSTOP it mid-channel.

Usage: ``python -m tests.harness.broker_proc SPEC.json``. SPEC holds ``settings`` (overrides
for ``load_settings``), ``endpoint`` ([host, port]) and ``expires_in_s``. The process starts the
broker, seeds the demo plant, prints ``TOKEN <join token>``, waits for the first agent, opens
one channel to ``endpoint`` through it, prints ``OPEN <expires_at as a Unix time>``, and then
just keeps it open.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import timedelta
from pathlib import Path

from broker.dev.demo import seed
from broker.runtime.settings import load_settings
from tests.harness.agent import gateway, make_token, on_broker_loop, wait_connected
from tests.harness.broker import start_broker


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    broker = start_broker(load_settings(None, **spec["settings"]))
    seed(broker.services.settings.database_url)
    print("TOKEN", make_token(broker), flush=True)
    while not gateway(broker).live():
        time.sleep(0.05)
    agent_id = next(iter(gateway(broker).live()))
    wait_connected(broker, agent_id)  # in live() before its hello; channels need the hello
    host, port = spec["endpoint"]

    async def open_and_hold() -> None:
        expires_at = broker.services.clock.now() + timedelta(seconds=spec["expires_in_s"])
        opened.append(expires_at.timestamp())
        ch = await gateway(broker).open_channel(agent_id, host, port, expires_at=expires_at)
        ch.write(b"ping\n")
        await ch.drain()
        assert await ch.read(5) == b"ping\n"
        holders.append(ch)

    holders: list[object] = []
    opened: list[float] = []
    on_broker_loop(broker, open_and_hold())
    print("OPEN", opened[0], flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
