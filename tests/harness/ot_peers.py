"""Real OT peers beside the Modbus PLC: python-snap7's S7 server and cpppo's EtherNet/IP simulator.

``S7Plc`` serves DB1 (32 bytes, 0..31) on 127.0.0.1 from a free port, in python-snap7's own
server thread; ``db1`` is the server's memory itself and ``cpu_state`` its run state: the
PLC-side truth. ``EnipSimulator`` runs ``python -m cpppo.server.enip`` as a subprocess on a
free port with the tags given; ``read`` reads a tag straight from it (not through Conduit).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from typing import Any

import snap7
from snap7.type import SrvArea

from tests.harness.ports import free_port
from tests.harness.wait import wait_until


class S7Plc:
    def __init__(self) -> None:
        self.db1 = bytearray(range(32))
        self.server = snap7.server.Server(log=False)
        self.server.register_area(SrvArea.DB, 1, self.db1)
        self.server.start_to("127.0.0.1", tcp_port=0)
        assert self.server.server_socket is not None
        self.port: int = self.server.server_socket.getsockname()[1]

    @property
    def cpu_state(self) -> str:
        return str(self.server.cpu_state.name)

    def stop(self) -> None:
        self.server.stop()


class EnipSimulator:
    """cpppo's EtherNet/IP CIP simulator (a Logix-like tag server) in its own process."""

    def __init__(self, *tags: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cpppo.server.enip", "--address", f"127.0.0.1:{self.port}",
             *tags],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self._probe = tags[0].split("=")[0] + ("[0]" if "[" in tags[0] else "")
        try:
            wait_until(self._answers, "the EtherNet/IP simulator to listen")
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        assert self.proc.poll() is None, self.proc.communicate()[1]
        with contextlib.suppress(Exception):
            self.read(self._probe)
            return True
        return False

    def read(self, tag: str) -> Any:
        """The value of ``tag`` (an element such as ``Setpoint[1]``), from the simulator."""
        from cpppo.server.enip.get_attribute import proxy_simple

        via = proxy_simple(host="127.0.0.1", port=self.port, timeout=5)
        with via:
            (value,) = via.read([tag])
        return value

    def stop(self) -> None:
        self.proc.terminate()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
