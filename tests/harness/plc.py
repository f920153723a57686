"""A real pymodbus PLC (``SimDevice``) on 127.0.0.1 in a background thread, for sync tests.

``PlcServer.start()`` serves device 1 with 300 coils, discrete inputs, holding registers (7)
and input registers (3); it records when each request frame arrives (``arrivals``) and can
read its own registers directly (the PLC-side truth). ``host`` (default 127.0.0.1) puts it on
another loopback address, e.g. so a vendor's forward can listen on 127.0.0.1 with the PLC's
own port number, as ``conduit forward`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from sessions.ot.modbus_wire import MbapFramer


class PlcServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.arrivals: list[float] = []
        self._framer = MbapFramer()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._server: ModbusTcpServer | None = None
        self.port = self.call(self._start())

    def call(self, coro: Any, timeout: float = 15) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            with contextlib.suppress(Exception):  # the trace must never break the PLC
                self.arrivals.extend(time.monotonic() for _ in self._framer.feed(data))
        return data

    async def _start(self) -> int:
        def block(kind: DataType, value: int | bool) -> list[SimData]:
            return [SimData(0, count=300, values=value, datatype=kind)]

        bits, regs = DataType.BITS, DataType.REGISTERS
        device = SimDevice(
            1, simdata=(block(bits, False), block(bits, False), block(regs, 7), block(regs, 3))
        )
        self._server = ModbusTcpServer(device, address=(self.host, 0), trace_packet=self._trace)
        await self._server.serve_forever(background=True)
        assert self._server.transport is not None
        port: int = self._server.transport.sockets[0].getsockname()[1]
        return port

    def holding(self, address: int, count: int = 1) -> list[int]:
        """Read holding registers directly from the PLC (not through Conduit)."""

        async def read() -> list[int]:
            client = AsyncModbusTcpClient(self.host, port=self.port, timeout=2, retries=0)
            await client.connect()
            try:
                rr = await client.read_holding_registers(address, count=count, device_id=1)
                assert not rr.isError()
                return list(rr.registers)
            finally:
                client.close()

        result: list[int] = self.call(read())
        return result

    def coils(self, address: int, count: int = 1) -> list[bool]:
        """Read coils directly from the PLC (not through Conduit)."""

        async def read() -> list[bool]:
            client = AsyncModbusTcpClient(self.host, port=self.port, timeout=2, retries=0)
            await client.connect()
            try:
                rr = await client.read_coils(address, count=count, device_id=1)
                assert not rr.isError()
                return list(rr.bits[:count])
            finally:
                client.close()

        result: list[bool] = self.call(read())
        return result

    def stop(self) -> None:
        if self._server is not None:
            self.call(self._server.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()
