"""broker.runtime.session_recorder.RecorderFactory: set-up off the event loop, start failures by mode.

Unit tests with small fakes for the database side (the integration tests in
test_ssh_sessions.py / test_ot_sessions.py run the real thing end to end).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from broker.runtime.session_recorder import ChannelRecorder, RecorderFactory, TcpRecording
from sessions.clock import SystemClock
from sessions.recording import Ed25519Signer, RecordingError, VerifyStatus, verify_recording


class _Maintenance:
    def __init__(self) -> None:
        self.threads: list[int] = []
        self.rows: list[tuple[str, str]] = []
        self.finished: list[str] = []

    def add_recording(self, session_id: str, *, fmt: str, path: str) -> str:
        self.threads.append(threading.get_ident())
        self.rows.append((session_id, fmt))
        return f"row-{len(self.rows)}"

    def finish_recording(self, row_id: str, **_: Any) -> None:
        self.finished.append(row_id)


class _Audit:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def append(self, kind: str, *, outcome: str, details: dict[str, Any], **_: Any) -> None:
        self.events.append((kind, outcome, details))


def _factory(root: Path) -> tuple[RecorderFactory, _Maintenance, _Audit, Ed25519Signer]:
    maintenance, audit, signer = _Maintenance(), _Audit(), Ed25519Signer.generate()
    factory = RecorderFactory(
        root,
        signer,
        SystemClock(),
        maintenance,  # type: ignore[arg-type]
        audit,  # type: ignore[arg-type]
        record_input=False,
    )
    return factory, maintenance, audit, signer


async def test_channel_recorder_is_set_up_off_the_event_loop(tmp_path: Path) -> None:
    factory, maintenance, audit, signer = _factory(tmp_path)
    recorder = await factory("s1", 1, 80, 24, "t", strict=True, on_failure=lambda why: None)
    assert isinstance(recorder, ChannelRecorder)
    assert maintenance.threads and threading.get_ident() not in maintenance.threads
    recorder.output(b"hello\r\n")
    assert await recorder.finish("done")
    assert maintenance.finished == ["row-1"]
    verified = verify_recording(tmp_path / "s1-1", signer.public_key)
    assert verified.status == VerifyStatus.OK
    # The clean end is audited with the final chain hash (what `conduit verify` checks against).
    [(kind, outcome, details)] = audit.events
    assert (kind, outcome) == ("recording.closed", "ok")
    assert (details["chunks"], details["size"]) == (verified.chunks, verified.size)
    assert details["final_chain"] == verified.head and details["session"] == "s1"


async def test_tcp_recording_is_set_up_off_the_event_loop(tmp_path: Path) -> None:
    factory, maintenance, _, _ = _factory(tmp_path)
    recording = await factory.tcp(
        "s2",
        1,
        client=("198.18.0.1", 40001),
        server=("127.0.0.1", 502),
        operations=True,
        strict=True,
        on_failure=lambda why: None,
    )
    assert isinstance(recording, TcpRecording) and recording.ops is not None
    assert [fmt for _, fmt in maintenance.rows] == ["pcap", "ops_jsonl"]
    assert threading.get_ident() not in maintenance.threads
    await recording.aclose("done")


async def test_start_failure_strict_raises_best_effort_returns_none(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")  # the recording root cannot be created below it
    factory, maintenance, audit, _ = _factory(blocked)
    with pytest.raises(RecordingError, match="recording could not start"):
        await factory("s3", 1, 80, 24, "t", strict=True, on_failure=lambda why: None)
    assert await factory("s3", 2, 80, 24, "t", strict=False, on_failure=lambda why: None) is None
    with pytest.raises(RecordingError):
        await factory.tcp(
            "s3",
            1,
            client=("198.18.0.1", 40001),
            server=("127.0.0.1", 502),
            operations=False,
            strict=True,
            on_failure=lambda why: None,
        )
    assert [(kind, outcome) for kind, outcome, _ in audit.events] == [
        ("recording.failed", "error")
    ] * 3
    assert [details["strict"] for _, _, details in audit.events] == [True, False, True]
    assert not maintenance.rows
