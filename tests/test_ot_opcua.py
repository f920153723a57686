"""The generic TCP path with a real OPC UA server (asyncua): port-level policy, byte counts,
and a pcap that tshark decodes as OPC UA."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, Server

from sessions.recording import assemble
from tests.harness.broker import RunningBroker
from tests.harness.components import TSHARK, needs, require
from tests.harness.ports import free_port
from tests.harness.ssh_session import SshRig
from tests.test_ot_sessions import _forward, _recordings, _wait_closed

pytestmark = needs("sshd")


class OpcUaServer:
    """An asyncua server with one variable (Press/Speed = 42.5), in a background loop."""

    def __init__(self) -> None:
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._server: Any = None
        self.node_id = self._call(self._start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _start(self) -> str:
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{self.port}/conduit/")
        idx = await server.register_namespace("urn:conduit:test")
        press = await server.nodes.objects.add_object(idx, "Press")
        speed = await press.add_variable(idx, "Speed", 42.5)
        await server.start()
        self._server = server
        return str(speed.nodeid.to_string())

    def stop(self) -> None:
        self._call(self._server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@pytest.fixture
def opcua() -> Iterator[OpcUaServer]:
    server = OpcUaServer()
    yield server
    server.stop()


def test_opcua_through_the_generic_tcp_path(
    broker: RunningBroker, tmp_path: Path, opcua: OpcUaServer
) -> None:
    rig = SshRig.build(broker, tmp_path, extra_endpoints=[("127.0.0.1", opcua.port, "opcua")])
    try:
        rig.add_asset("opcua-lab", opcua.port, "opcua")
        rig.vendor("alice")
        rig.grant(asset="opcua-lab")
        proc, local = _forward(rig, opcua.port, asset="opcua-lab")
        try:

            async def read() -> Any:
                async with Client(url=f"opc.tcp://127.0.0.1:{local}/conduit/", timeout=10) as c:
                    return await c.get_node(opcua.node_id).read_value()

            assert asyncio.run(read()) == 42.5
            [live] = broker.services.live.list()
            assert live.kind == "tcp" and live.bytes_up > 0 and live.bytes_down > 0
        finally:
            proc.kill()
            proc.communicate(5)
        [pcap_dir] = _recordings(rig, "-tcp1")
        _wait_closed(pcap_dir)
        assert not _recordings(rig, "-ops")  # no operations log for a generic protocol
        require("tshark")  # the pcap was recorded; decoding it needs tshark
        tshark = TSHARK
        pcap = tmp_path / "opcua.pcap"
        pcap.write_bytes(assemble(pcap_dir))
        out = subprocess.run(
            [tshark, "-n", "-r", str(pcap), "-d", f"tcp.port=={opcua.port},opcua",
             "-Y", "opcua", "-T", "fields", "-e", "opcua.transport.type"],
            capture_output=True, text=True, check=True, env={**os.environ, "HOME": str(tmp_path)},
        )  # fmt: skip
        kinds = out.stdout.split()
        assert kinds[:2] == ["HEL", "ACK"] and "MSG" in kinds, out.stdout
    finally:
        rig.close()
