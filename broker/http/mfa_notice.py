"""The approver's warning that a requester would be refused at connect time for lack of MFA.

Whether MFA is needed is the policy's word, not this module's: the decision that allowed filing
a request carries ``obligations.require_mfa`` (docs/policy.md), stored on the request
(``AccessRequest.obligations``, migration 0010). :func:`mfa_warning` warns when that obligation
is true and the requester's last sign-in (``User.amr``) names no MFA method, so an approver
can ask for an MFA sign-in before approving a grant that could not be used. A policy admin who
changes when MFA is required changes the warning with it; there is no copy of the rule here.

What counts as an MFA method is read from RFC 8176 ``amr`` values (``mfa``, ``otp``, ``hwk``),
the same reading docs/policy.md gives the input contract.

Requests filed before obligations were stored (``obligations`` None) get no guess: when the
requester has no MFA sign-in, the warning says the need is not known and policy decides at
connect. The warning never blocks anything: policy decides at connect time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

MFA_METHODS = ("mfa", "otp", "hwk")


def has_mfa(amr: Iterable[str]) -> bool:
    """Whether an ``amr`` list names an MFA method (RFC 8176)."""
    return any(m in MFA_METHODS for m in amr)


def mfa_warning(amr: Iterable[str], obligations: Mapping[str, Any] | None) -> str | None:
    """A sentence for the approver, or None when nothing is wrong.

    ``obligations``: the request's stored filing-time obligations; None when not recorded.
    """
    methods = list(amr)
    if has_mfa(methods):
        return None
    shown = ", ".join(methods) if methods else "none"
    if obligations is None:
        return (
            f"The requester's last sign-in used no MFA (amr: {shown}). This request was filed "
            "before Conduit recorded the policy's obligations, so whether connecting needs MFA "
            "is not known here; policy decides at connect time."
        )
    if obligations.get("require_mfa") is not True:
        return None
    return (
        f"The requester's last sign-in used no MFA (amr: {shown}); the policy's decision at "
        "filing requires MFA at connect (require_mfa), so sessions under this grant will be "
        "refused until they sign in with MFA."
    )
