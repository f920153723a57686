"""``AccessService``: the one object the broker holds for access requests and grants."""

from __future__ import annotations

from sessions.access.approvals import RequestDecisions
from sessions.access.filing import RequestFiling
from sessions.access.lifecycle import GrantClock
from sessions.access.recheck import GrantRecheck
from sessions.access.revocation import GrantRevocation


class AccessService(RequestFiling, RequestDecisions, GrantClock, GrantRevocation, GrantRecheck):
    """Requests, approvals and grants (see :mod:`sessions.access`).

    Built from one :class:`sessions.access.base.AccessCore` (engine, authorizer, audit log,
    clock), so ``on_grant_ended`` and ``listeners`` are shared by every part.
    """
