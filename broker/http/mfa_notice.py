"""The approver's warning that a requester would be refused at connect time for lack of MFA.

The bundled policy (``policies/bundle/conduit/access/access.rego``, ``mfa_basis``) refuses a
connection to a Purdue level 1-2 asset, or program/firmware work on any asset, unless the
credential's ``amr`` names ``mfa``, ``otp`` or ``hwk``. Approvers see :func:`mfa_warning` on
the queue and the request rows when the requester's last sign-in (``User.amr``) has none of
them, so they can ask for an MFA sign-in before approving a grant that could not be used.
The warning never blocks anything: policy decides at connect time.
"""

from __future__ import annotations

from collections.abc import Iterable

MFA_METHODS = ("mfa", "otp", "hwk")
MFA_LEVELS = (1, 2)
MFA_CLASSES = ("program", "firmware")


def needs_mfa(purdue_level: int | None, operation_class: str) -> bool:
    """Whether connecting under such a grant needs MFA (the bundled policy's rule)."""
    return purdue_level in MFA_LEVELS or operation_class in MFA_CLASSES


def has_mfa(amr: Iterable[str]) -> bool:
    return any(m in MFA_METHODS for m in amr)


def mfa_warning(amr: Iterable[str], purdue_level: int | None, operation_class: str) -> str | None:
    """A sentence for the approver, or None when nothing is wrong."""
    methods = list(amr)
    if not needs_mfa(purdue_level, operation_class) or has_mfa(methods):
        return None
    why = (
        f"Purdue level {purdue_level} assets"
        if purdue_level in MFA_LEVELS
        else f"{operation_class} work"
    )
    shown = ", ".join(methods) if methods else "none"
    return (
        f"The requester's last sign-in used no MFA (amr: {shown}); connecting for {why} "
        "needs MFA, so sessions under this grant will be refused until they sign in with MFA."
    )
