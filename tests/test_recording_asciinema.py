"""Recordings against the real world: Debian's ``asciinema cat``, and a SIGKILLed writer."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from sessions.asciicast import AsciicastRecorder
from sessions.recording import (
    CHAIN_FILE,
    Ed25519Signer,
    LocalStore,
    RecordingWriter,
    VerifyStatus,
    assemble,
    verify_recording,
)
from sessions.testing import ManualClock
from tests.harness.components import ASCIINEMA, needs, require
from tests.harness.wait import wait_until

REPO = Path(__file__).resolve().parents[1]

# Becomes the controlling terminal's session leader, then execs asciinema: `asciinema cat`
# opens /dev/tty to put it in raw mode, so it needs a real terminal.
_WITH_CTTY = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def asciinema_cat(cast: Path, home: Path) -> bytes:
    """What ``asciinema cat CAST`` writes to its terminal (a pty in raw mode: bytes as is).

    Ends the test through :func:`~tests.harness.components.require` if asciinema is missing.
    """
    require("asciinema")
    master, slave = os.openpty()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WITH_CTTY, ASCIINEMA, "cat", str(cast)],
        stdin=slave,
        stdout=slave,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last user has gone
                break
            if not data:
                break
            out += data
        _, err = proc.communicate(timeout=10)
    finally:
        os.close(master)
    assert proc.returncode == 0, err.decode()
    return bytes(out)


@needs("asciinema")
def test_a_recorded_session_plays_in_asciinema_and_verifies(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC))
    signer = Ed25519Signer.generate()
    writer = RecordingWriter(
        LocalStore(tmp_path / "store"),
        "ssh-1",
        kind="asciicast",
        signer=signer,
        clock=clock,
        meta={"session_id": "ssh-1"},
    )
    rec = AsciicastRecorder(
        writer, 80, 24, record_input=True, clock=clock, env={"TERM": "xterm"}, title="plc-7"
    )
    output = [
        b"Last login: Mon May  4 07:08:09 2026\r\n",
        b"\x1b[1;32mvendor@plc-7\x1b[0m:~$ ",
        "Temperatur 21 °C, Druck ≥ 3 bar — ok\r\n".encode(),
        b'{"json": "needs \\"escaping\\""}\ttab\r\n',
        "split: 日本".encode()[:-1],  # the last character arrives in the next read
        "split: 日本".encode()[-1:] + b"\r\n",
        b"\x07bell and \x00 nul\r\n",
        b"logout\r\n",
    ]
    for i, data in enumerate(output):
        clock.advance(0.25)
        rec.input(b"x")
        rec.output(data)
        if i == 3:
            rec.resize(132, 43)
        if i % 2:
            writer.flush()
    rec.finish()
    writer.close("client_closed")

    result = verify_recording(tmp_path / "store" / "ssh-1", signer.public_key)
    assert result.status == VerifyStatus.OK, result.reason
    assert result.chunks == 4
    cast = tmp_path / "session.cast"
    cast.write_bytes(assemble(tmp_path / "store" / "ssh-1"))
    assert asciinema_cat(cast, tmp_path) == b"".join(output)


_CHILD = """
import asyncio, sys, time
from pathlib import Path
from sessions.asciicast import AsciicastRecorder
from sessions.clock import SystemClock
from sessions.recording import Ed25519Signer, FlushTimer, LocalStore, RecordingWriter

async def main() -> None:
    clock = SystemClock()
    writer = RecordingWriter(
        LocalStore(Path(sys.argv[1])), "killed", kind="asciicast",
        signer=Ed25519Signer.from_file(Path(sys.argv[2])), clock=clock,
    )
    rec = AsciicastRecorder(writer, 80, 24, clock=clock)
    timer = FlushTimer(writer)
    timer.start()
    n = 0
    while True:
        rec.output(f"tick {n} {time.monotonic():.6f}\\r\\n".encode())
        print(n, flush=True)
        n += 1
        await asyncio.sleep(0.02)

asyncio.run(main())
"""


def test_sigkilled_writer_verifies_up_to_its_last_flush(tmp_path: Path) -> None:
    signer = Ed25519Signer.generate()
    key = tmp_path / "key"
    key.write_bytes(signer.private_key_openssh())
    key.chmod(0o600)
    store = tmp_path / "store"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(store), str(key)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    chain = store / "killed" / CHAIN_FILE
    try:  # run until 3 flushes, then kill it mid-way through whatever it is doing
        wait_until(lambda: chain.exists() and chain.read_bytes().count(b"\n") >= 3, "three flushes")
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    written = int(out.split()[-1])

    result = verify_recording(store / "killed", signer.public_key)
    assert result.status == VerifyStatus.INCOMPLETE, result.reason
    assert result.chunks >= 3
    lines = assemble(store / "killed").decode().splitlines()
    assert json.loads(lines[0])["version"] == 2
    ticks = [json.loads(line)[2].split() for line in lines[1:]]
    numbers = [int(t[1]) for t in ticks]
    assert numbers == list(range(len(numbers)))  # everything up to the last flush, in order
    assert numbers[-1] <= written
    # How much a kill loses (one flush interval, 1 s) is measured by bench/latency_bounds.py.

    # The cut-off recording still plays (asciinema_cat requires asciinema: no silent pass).
    cast = tmp_path / "killed.cast"
    cast.write_bytes(assemble(store / "killed"))
    played = asciinema_cat(cast, tmp_path).decode()
    assert played.count("tick ") == len(numbers)
