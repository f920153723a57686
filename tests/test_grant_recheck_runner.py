"""GrantRecheckRunner: re-checks on a plant change (from any thread), on a bundle version
change, periodically, and sooner after a re-check whose engine failed; always with the plant
data's push problem. (The re-check itself, end to end: tests/test_grant_recheck.py.)"""

from __future__ import annotations

import threading

from broker.runtime.grant_recheck import GrantRecheckRunner
from sessions.access.recheck import RecheckReport
from tests.harness.wait import async_wait_until


class Calls:
    """A fake re-check that records its triggers; ``failing`` grants fail to be decided."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.failing: list[str] = []

    async def __call__(self, trigger: str, problem: str | None) -> RecheckReport:
        self.seen.append((trigger, problem))
        return RecheckReport(trigger, failed=list(self.failing))


async def test_plant_changes_and_bundle_versions_trigger_a_recheck() -> None:
    calls, version, problem = Calls(), ["v1"], [None]
    runner = GrantRecheckRunner(
        calls, lambda: version[0], lambda: problem[0], interval_s=3600, poll_s=0.02
    )
    runner.start()
    try:
        thread = threading.Thread(target=runner.plant_changed)
        thread.start()
        thread.join()
        await async_wait_until(lambda: calls.seen == [("plant change", None)], "a re-check")
        runner.plant_changed("push failed: server down")
        await async_wait_until(lambda: len(calls.seen) == 2, "a second re-check")
        assert calls.seen[1] == ("plant change", "push failed: server down")
        version[0], problem[0] = "v2", "data stale"
        await async_wait_until(lambda: len(calls.seen) == 3, "the re-check on the new bundle")
        assert calls.seen[2] == ("policy bundle v2", "data stale")
    finally:
        await runner.aclose()
    runner.plant_changed()  # after close: ignored, never raises


async def test_periodic_backstop_and_a_sooner_retry_after_a_failure() -> None:
    calls = Calls()
    calls.failing = ["g-1"]
    runner = GrantRecheckRunner(
        calls, lambda: None, lambda: None, interval_s=0.3, retry_s=0.01, poll_s=0.01
    )
    runner.start()
    try:
        await async_wait_until(lambda: len(calls.seen) >= 3, "a periodic re-check and retries")
        assert [t for t, _ in calls.seen[:3]] == ["periodic", "retry", "retry"]
        calls.failing = []
        count = len(calls.seen)
        await async_wait_until(lambda: len(calls.seen) > count + 1, "the backstop again")
        assert calls.seen[-1][0] == "periodic"
    finally:
        await runner.aclose()
