"""The tests' real OpenSSH server: :mod:`broker.local_sshd` (shared with ``conduit demo``)."""

from __future__ import annotations

from broker.local_sshd import (
    SSHD,
    RunningSshd,
    SshdError,
    sshd_available,
    start_sshd,
)

__all__ = ["SSHD", "RunningSshd", "SshdError", "sshd_available", "start_sshd"]
