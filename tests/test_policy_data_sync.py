"""PolicyDataSync: pushes on change (coalesced, from any thread), periodically, and reports a
failing engine once per change of state."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

from broker.runtime.policy_data_sync import PolicyDataSync
from policies.decision import Decision, deny
from policies.errors import PolicyError
from tests.harness.wait import async_wait_until


class RecordingEngine:
    """An engine that keeps what was pushed and refuses it while ``down`` is set."""

    name = "fake"

    def __init__(self) -> None:
        self.pushed: list[dict[str, Any]] = []
        self.down = False

    async def decide(self, document: Mapping[str, Any]) -> Decision:
        return deny("fake engine", engine=self.name)

    async def push_data(self, data: Mapping[str, Any]) -> None:
        if self.down:
            raise PolicyError("pushing data.plant failed: server down", code="opa_data_push")
        self.pushed.append(dict(data))

    async def aclose(self) -> None:
        pass


async def test_changes_from_other_threads_coalesce_into_one_push() -> None:
    engine, version = RecordingEngine(), [0]
    sync = PolicyDataSync(
        lambda: {"plant": {"version": version[0]}}, engine, interval_s=3600, debounce_s=0.2
    )
    await sync.start()
    assert engine.pushed == [{"plant": {"version": 0}}]  # at start

    def burst() -> None:
        for n in range(1, 11):
            version[0] = n
            sync.changed()

    thread = threading.Thread(target=burst)
    thread.start()
    thread.join()
    await async_wait_until(lambda: engine.pushed[-1] == {"plant": {"version": 10}}, "the push")
    await asyncio.sleep(0.3)  # would a second push follow? (none should)
    await sync.aclose()
    assert len(engine.pushed) == 2
    sync.changed()  # after close: ignored, never raises


async def test_periodic_backstop_pushes_without_a_change() -> None:
    engine = RecordingEngine()
    sync = PolicyDataSync(lambda: {"plant": {}}, engine, interval_s=0.05)
    await sync.start()
    try:
        await async_wait_until(lambda: len(engine.pushed) >= 3, "periodic pushes")
    finally:
        await sync.aclose()


async def test_failures_are_reported_once_then_the_recovery() -> None:
    engine = RecordingEngine()
    engine.down = True
    reports: list[str | None] = []

    async def on_status(problem: str | None) -> None:
        reports.append(problem)

    sync = PolicyDataSync(lambda: {"plant": {}}, engine, interval_s=3600)
    sync.on_status = on_status
    await sync.start()
    assert await sync.refresh() is False
    assert reports == ["pushing data.plant failed: server down"]  # not once per attempt
    assert sync.problem == reports[0] and sync.pushes == 0
    engine.down = False
    assert await sync.refresh() is True
    assert await sync.refresh() is True
    await sync.aclose()
    assert reports == ["pushing data.plant failed: server down", None]
    assert sync.problem is None and sync.pushes == 2


async def test_changed_data_is_announced_once_pushed_and_once_when_it_fails() -> None:
    """``on_change`` (the grant re-check) hears of data the engine has not taken yet: None
    once it was pushed, the problem on the first failed push of it; unchanged data is silent."""
    engine, version = RecordingEngine(), [0]
    heard: list[str | None] = []
    sync = PolicyDataSync(lambda: {"plant": {"version": version[0]}}, engine, interval_s=3600)
    await sync.start()
    sync.on_change = heard.append
    assert await sync.refresh() is True  # the same data again: nothing to say
    version[0] = 1
    assert await sync.refresh() is True
    assert heard == [None]
    engine.down, version[0] = True, 2
    assert await sync.refresh() is False
    assert await sync.refresh() is False  # the same failure again: said once
    assert heard == [None, "pushing data.plant failed: server down"]
    engine.down = False
    assert await sync.refresh() is True  # taken at last: the re-check runs on it
    assert await sync.refresh() is True
    assert heard == [None, "pushing data.plant failed: server down", None]
    await sync.aclose()
