"""The decision-point interface every adapter implements (embedded Rego, OPA server)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from policies.decision import Decision


class Engine(Protocol):
    """Answers one policy query per call.

    ``decide`` never raises for a policy problem: an undefined result, an evaluation error,
    a timeout or an unreachable server all come back as a deny whose reasons say why. The
    returned decision carries ``engine``, ``bundle_version``, ``input_hash`` and
    ``elapsed_ms``.
    """

    name: str

    async def decide(self, document: Mapping[str, Any]) -> Decision: ...

    async def push_data(self, data: Mapping[str, Any]) -> None:
        """Replace the data documents policies read (``{"plant": {...}}`` → ``data.plant``).

        Raises :class:`policies.errors.PolicyError` when the data could not be delivered (an
        OPA server down or refusing it); decisions then go on with the data last delivered.
        """
        ...

    async def aclose(self) -> None: ...
