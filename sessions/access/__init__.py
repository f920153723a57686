"""Access requests, approvals and time-limited grants: no vendor has standing access.

State machines (constants in :mod:`sessions.models`):

* request: ``pending`` → ``approved`` | ``denied`` | ``cancelled`` | ``expired``;
* grant: created ``approved`` when a request has the approvals policy requires →
  ``active`` at window start if policy still finds the requester eligible (else ``revoked``)
  → ``expired`` at window end; ``approved``/``active`` → ``revoked`` (one grant). The vendor
  lockout suspends vendor grants without changing their state (see ``set_lockout``).

Policy is asked on every request (kind ``request``: role, contract, Purdue level, lockout;
its obligations bound the window and name how many approvals are needed), on every approval
(kind ``approve``: owner group, never one's own request, each person once) and again at
activation; an active grant is re-asked when the plant or the bundle changes (and every
minute), and revoked with the policy's reasons when it is no longer eligible. Every step is an
audit event. Time comes from the injected clock; ``tick``
moves grants along and is called by the broker's scheduler (and by tests, with a manual
clock). ``on_grant_ended`` callbacks receive ``(grant_id, reason)`` so live sessions can be cut.

Modules: :mod:`.request_spec` (a request on its face and what it reaches), :mod:`.base` (shared
dependencies, the audited transaction, :class:`AccessDenied`), :mod:`.filing` (requests),
:mod:`.approvals` (approve, deny, cancel), :mod:`.lifecycle` (``tick``), :mod:`.revocation`
(revoke, lockout), :mod:`.recheck` (eligibility of active grants) and :mod:`.service`
(:class:`AccessService`, all of them). Callers import a name from the module that defines it.
"""

# Re-exported for broker/ssh/front.py, broker/services.py, broker/app.py and
# sessions/maintenance.py, which import them from here.
from sessions.access.base import AccessDenied
from sessions.access.service import AccessService

__all__ = ["AccessDenied", "AccessService"]
