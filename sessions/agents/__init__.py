"""Agents: enrolment tokens, join, identity at connect time, inventory, health and revoke.

Agent lifecycle (constants in :class:`sessions.models.AgentState`): an admin creates a join
token (single use, expiring, bound to a site and optionally a zone); :meth:`AgentService.join`
redeems it exactly once and creates an ``active`` agent whose certificate the injected
``signer`` issues; ``active`` → ``revoked`` is final (a revoked key never connects again).

Inventory: the agent reports the endpoints its own config declares; they are stored as
:class:`AgentEndpoint` rows, matched to assets by (agent, host, port). Endpoints no asset
matches are listed for an admin to adopt; assets whose endpoint the agent no longer declares are
listed as unreachable. Every decision here is an audit event; refusals carry a ``reason`` code.

Modules: :mod:`.base` (shared dependencies, refusals), :mod:`.enrolment` (join tokens, join),
:mod:`.connections` (identity at connect time, inventory, health), :mod:`.registry` (the
admin's list, revoke, adopt) and :mod:`.service` (:class:`AgentService`, all of them). Callers
import a name from the module that defines it.
"""

# Re-exported for broker/services.py and broker/app.py, which import it from here.
from sessions.agents.service import AgentService

__all__ = ["AgentService"]
