"""OT protocol sessions end to end: a real pymodbus PLC and an asyncua OPC UA server behind
the agent, reached by forwarding through the front door (``ssh -L``, what ``conduit forward``
runs), with the Modbus inspector enforcing the grant's obligations and pcap + ops-log recording.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ConnectionException

from sessions.recording import assemble, load_public_key, verify_recording
from sessions.session_end import EndCode, Ending
from tests.harness.broker import RunningBroker, audit_events
from tests.harness.components import needs, require
from tests.harness.plc import PlcServer
from tests.harness.ports import free_port
from tests.harness.ssh_session import PLC_SETTINGS, SshRig

pytestmark = needs("sshd")
TSHARK = shutil.which("tshark")


@pytest.fixture
def rig(broker: RunningBroker, tmp_path: Path, plc: PlcServer) -> Iterator[SshRig]:
    rig = SshRig.build(broker, tmp_path, extra_endpoints=[("127.0.0.1", plc.port, "modbus")])
    rig.add_asset("plc-lab", plc.port, "modbus", settings=PLC_SETTINGS)
    rig.vendor("alice")
    yield rig
    rig.close()


def _forward(
    rig: SshRig, remote_port: int, asset: str = "plc-lab"
) -> tuple[subprocess.Popen[str], int]:
    local = free_port()
    proc = subprocess.Popen(
        [*rig.ssh_argv("alice", "-N", "-o", "ExitOnForwardFailure=yes",
                       "-L", f"127.0.0.1:{local}:localhost:{remote_port}",
                       login="forward", asset=asset)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:  # wait for ssh to listen, without opening a (recorded) connection
        listening = subprocess.run(
            ["ss", "-ltnH", f"( sport = :{local} )"], capture_output=True, text=True, check=True
        )
        if listening.stdout.strip():
            return proc, local
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "ssh -L never listened"
        time.sleep(0.05)


def _client(port: int) -> ModbusTcpClient:
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=10, retries=0)
    assert client.connect()
    return client


def _recordings(rig: SshRig, suffix: str) -> list[Path]:
    root = rig.broker.services.settings.data_dir / "recordings"
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.endswith(suffix))


def _wait_closed(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not (path / "manifest.json").exists():
        assert time.monotonic() < deadline, f"{path} never got its manifest"
        time.sleep(0.05)


def test_read_only_grant_reads_pass_writes_never_reach_the_plc(rig: SshRig, plc: PlcServer) -> None:
    rig.grant(asset="plc-lab", operation_class="read_only")
    proc, port = _forward(rig, plc.port)
    try:
        client = _client(port)
        rr = client.read_holding_registers(10, count=4, device_id=1)
        assert not rr.isError() and rr.registers == [7, 7, 7, 7]
        wr = client.write_register(10, 999, device_id=1)
        assert wr.isError() and wr.exception_code == 1  # ILLEGAL FUNCTION
        wm = client.write_registers(20, [1, 2, 3], device_id=1)
        assert wm.isError() and wm.exception_code == 1
        assert client.read_holding_registers(10, count=1, device_id=1).registers == [7]  # still up
        client.close()
    finally:
        proc.kill()
        proc.communicate(5)
    assert plc.holding(10) == [7] and plc.holding(20, 3) == [7, 7, 7]  # PLC-side truth
    refused = [e for e in audit_events(rig.broker, "ot.refused")]
    _until(lambda: len(audit_events(rig.broker, "ot.refused")) >= 2, "refusal alerts")
    refused = audit_events(rig.broker, "ot.refused")
    assert {e["details"]["function"] for e in refused} == {6, 16}


def _until(predicate: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_tune_grant_writes_inside_ranges_only_and_everything_is_recorded(
    rig: SshRig, plc: PlcServer, tmp_path: Path
) -> None:
    rig.grant(asset="plc-lab", operation_class="tune")
    proc, port = _forward(rig, plc.port)
    try:
        client = _client(port)
        assert not client.write_register(10, 1234, device_id=1).isError()
        assert not client.write_registers(95, [1, 2, 3, 4, 5], device_id=1).isError()
        outside = client.write_register(150, 42, device_id=1)
        assert outside.isError() and outside.exception_code == 2  # ILLEGAL DATA ADDRESS
        straddling = client.write_registers(98, [9, 9, 9], device_id=1)
        assert straddling.isError() and straddling.exception_code == 2
        assert client.read_holding_registers(10, count=1, device_id=1).registers == [1234]
        client.close()
    finally:
        proc.kill()
        proc.communicate(5)
    assert plc.holding(10) == [1234] and plc.holding(95, 5) == [1, 2, 3, 4, 5]
    assert plc.holding(150) == [7] and plc.holding(98, 3) == [4, 5, 7]

    [pcap_dir] = _recordings(rig, "-tcp1")
    [ops_dir] = _recordings(rig, "-tcp1-ops")
    _wait_closed(pcap_dir)
    _wait_closed(ops_dir)
    key = load_public_key(rig.broker.services.settings.data_dir / "keys" / "recording_ed25519.pub")
    assert verify_recording(pcap_dir, key).ok and verify_recording(ops_dir, key).ok

    ops = [json.loads(line) for line in assemble(ops_dir).decode().splitlines()]
    summary = [(o["function"], o["start"], o["allowed"]) for o in ops]
    assert summary == [
        (6, 10, True),
        (16, 95, True),
        (6, 150, False),
        (16, 98, False),
        (3, 10, True),
    ]
    assert ops[1]["values"] == [1, 2, 3, 4, 5] and ops[-1]["response_values"] == [1234]

    require("tshark")  # the pcap was verified; decoding it needs tshark
    pcap = tmp_path / "session.pcap"
    pcap.write_bytes(assemble(pcap_dir))
    # The test PLC listens on a free port, not 502; the pcap says 502 (its real port is in
    # the recording's metadata), so stock tshark decodes it with no options.
    assert plc.port != 502
    meta = json.loads((pcap_dir / "manifest.json").read_text())["meta"]
    assert (meta["server_port"], meta["pcap_server_port"]) == (plc.port, 502)
    out = subprocess.run(
        [TSHARK, "-n", "-r", str(pcap), "-Y", "modbus", "-T", "fields", "-e", "modbus.func_code"],
        capture_output=True, text=True, check=True, env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    codes = [line.split(",")[0] for line in out.stdout.split()]
    # Requests that reached the PLC with their answers; a refused request never reached it,
    # so only the exception the broker answered appears (0x86 → 6, 0x90 → 16).
    assert codes == ["6", "6", "16", "16", "6", "16", "3", "3"], out.stdout


def test_a_flood_is_throttled_to_the_policy_rate_at_the_plc(rig: SshRig, plc: PlcServer) -> None:
    rig.grant(asset="plc-lab", operation_class="read_only")  # level 3: 50 requests/s
    proc, port = _forward(rig, plc.port)
    try:
        client = _client(port)
        plc.arrivals.clear()
        for _ in range(120):
            assert not client.read_holding_registers(0, count=1, device_id=1).isError()
        client.close()
    finally:
        proc.kill()
        proc.communicate(5)
    arrivals = sorted(plc.arrivals)
    assert len(arrivals) == 120
    busiest = max(sum(1 for t in arrivals if s <= t < s + 1.0) for s in arrivals)
    assert busiest <= 52, f"{busiest} requests reached the PLC within one second (limit 50/s)"


class SlowPlc:
    """A delay line in front of the real PLC: each request reaches it ``delay_s`` late."""

    def __init__(self, plc_port: int, delay_s: float) -> None:
        self.plc_port, self.delay_s = plc_port, delay_s
        self.arrived = threading.Event()  # a request reached the delay line
        self._handlers: set[asyncio.Task[None]] = set()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.port: int = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Held here until done: asyncio keeps only a weak reference to a handler's task, and
        # one waiting on a closing transport could otherwise be collected while pending.
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        plc_r, plc_w = await asyncio.open_connection("127.0.0.1", self.plc_port)

        async def up() -> None:
            while data := await reader.read(65536):
                self.arrived.set()
                await asyncio.sleep(self.delay_s)
                plc_w.write(data)
                await plc_w.drain()

        async def down() -> None:
            while data := await plc_r.read(65536):
                writer.write(data)
                await writer.drain()

        try:
            with contextlib.suppress(Exception):
                await asyncio.gather(up(), down())
        finally:  # also when cancelled at stop()
            for w in (writer, plc_w):
                w.close()
            for w in (writer, plc_w):  # let the transports finish closing on this loop
                with contextlib.suppress(Exception):
                    await w.wait_closed()

    def stop(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            await self._server.wait_closed()
            # A connection accepted while closing starts another handler, and its callbacks
            # may still be queued: drain the loop until no task is left for two passes.
            idle = 0
            while idle < 2:
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await asyncio.sleep(0)
                idle = 0 if tasks else idle + 1

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def test_a_transaction_sent_before_the_cut_is_answered(
    broker: RunningBroker, tmp_path: Path, plc: PlcServer
) -> None:
    slow = SlowPlc(plc.port, delay_s=0.6)
    rig = SshRig.build(broker, tmp_path, extra_endpoints=[("127.0.0.1", slow.port, "modbus")])
    try:
        rig.add_asset("plc-slow", slow.port, "modbus", settings=PLC_SETTINGS)
        rig.vendor("alice")
        rig.grant(asset="plc-slow", operation_class="tune")
        proc, port = _forward(rig, slow.port, asset="plc-slow")
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=10, retries=0)
        assert client.connect()
        result: dict[str, Any] = {}
        writer = threading.Thread(
            target=lambda: result.update(answer=client.write_register(5, 321, device_id=1))
        )
        writer.start()
        assert slow.arrived.wait(30)  # the request is on its way to the PLC, unanswered
        [live] = broker.services.live.list()
        assert broker.services.live.kill is not None
        cut = Ending(EndCode.ADMIN_KILL, "terminated by test")
        _on_loop(broker, lambda: broker.services.live.kill(live.id, cut))
        writer.join(10)
        assert not result["answer"].isError(), result  # the answer was delivered before the cut
        assert plc.holding(5) == [321]
        # ...and the connection is cut afterwards: no further request gets through.
        with pytest.raises(ConnectionException):
            client.read_holding_registers(0, count=1, device_id=1)
        client.close()
        proc.communicate(timeout=10)
    finally:
        rig.close()
        slow.stop()


def _on_loop(broker: RunningBroker, func: Any) -> None:
    loop = broker.services.gateway.loop if broker.services.gateway else None
    assert loop is not None
    loop.call_soon_threadsafe(func)


def test_a_malformed_frame_is_refused_audited_and_its_bytes_recorded(
    rig: SshRig, plc: PlcServer, tmp_path: Path
) -> None:
    rig.grant(asset="plc-lab", operation_class="read_only")
    read = struct.pack(">HHHBBHH", 1, 0, 6, 1, 3, 10, 2)
    bad = struct.pack(">HHHBBHH", 2, 0x6666, 6, 1, 3, 10, 2)  # protocol id must be 0
    after = struct.pack(">HHHBBHH", 3, 0, 6, 1, 3, 20, 1)
    proc, port = _forward(rig, plc.port)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(read + bad + after)
            received = b""
            while chunk := sock.recv(4096):  # the broker cuts the connection
                received += chunk
    finally:
        proc.kill()
        proc.communicate(5)
    assert received == struct.pack(">HHHBBBHH", 1, 0, 7, 1, 3, 4, 7, 7)  # only the valid read
    reason = "malformed Modbus request: MBAP protocol id 26214 (must be 0)"
    _until(lambda: audit_events(rig.broker, "ot.malformed"), "the malformed-frame event")
    [event] = audit_events(rig.broker, "ot.malformed")
    assert event["outcome"] == "refused" and event["details"]["reason"] == reason
    assert event["details"]["raw"] == (bad + after).hex()

    [pcap_dir] = _recordings(rig, "-tcp1")
    [ops_dir] = _recordings(rig, "-tcp1-ops")
    _wait_closed(pcap_dir)
    _wait_closed(ops_dir)
    ops = [json.loads(line) for line in assemble(ops_dir).decode().splitlines()]
    # the refusal is logged at once; the read when its answer arrives (drained before the cut)
    assert [(o["transaction_id"], o["result"]) for o in ops] == [(2, "refused"), (1, "ok")]
    assert ops[0]["reason"] == reason and ops[0]["raw"] == (bad + after).hex()

    require("tshark")  # the pcap was recorded; decoding it needs tshark
    pcap = tmp_path / "malformed.pcap"
    pcap.write_bytes(assemble(pcap_dir))
    out = subprocess.run(
        [TSHARK, "-n", "-r", str(pcap), "-Y", "tcp.dstport==502 && tcp.len > 0",
         "-T", "fields", "-e", "tcp.payload"],
        capture_output=True, text=True, check=True, env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    # towards the PLC's side: the read that reached it, then the bytes the broker stopped
    assert bytes.fromhex("".join(out.stdout.split())) == read + bad + after, out.stdout
