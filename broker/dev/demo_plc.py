"""The demo's simulated PLC: a real pymodbus Modbus/TCP server on a loopback port.

Used only by ``conduit demo`` (pymodbus is a development dependency, imported lazily): device 1
with 300 coils, inputs and registers, so the demo can show read-only refusals, tune writes
inside the asset's write ranges, and the operations timeline. ``None`` when pymodbus is absent.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any


class SimulatedPlc:
    """Owner of the server thread: :meth:`stop`."""

    def __init__(self, port: int, stop: Callable[[], None]) -> None:
        self.port, self.stop = port, stop


def start_simulated_plc() -> SimulatedPlc | None:
    try:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice
    except ImportError:
        return None
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="demo-plc", daemon=True)
    thread.start()
    holder: dict[str, Any] = {}

    async def start() -> int:
        def block(kind: Any, value: Any) -> list[Any]:
            return [SimData(0, count=300, values=value, datatype=kind)]

        bits, regs = DataType.BITS, DataType.REGISTERS
        device = SimDevice(
            1, simdata=(block(bits, False), block(bits, False), block(regs, 100), block(regs, 7))
        )
        server = ModbusTcpServer(device, address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        holder["server"] = server
        transport: Any = server.transport  # an asyncio Server for TCP
        port: int = transport.sockets[0].getsockname()[1]
        return port

    port = asyncio.run_coroutine_threadsafe(start(), loop).result(15)

    def stop() -> None:
        server = holder.get("server")
        if server is not None:
            asyncio.run_coroutine_threadsafe(server.shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    return SimulatedPlc(port, stop)
