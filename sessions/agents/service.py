"""``AgentService``: the one object the broker holds for agents."""

from __future__ import annotations

from sessions.agents.connections import AgentConnections
from sessions.agents.enrolment import AgentEnrolment
from sessions.agents.registry import AgentRegistry


class AgentService(AgentEnrolment, AgentConnections, AgentRegistry):
    """Enrolment and inventory of agents (see :mod:`sessions.agents`). Thread-safe; each call
    is one transaction."""
