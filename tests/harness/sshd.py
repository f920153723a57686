"""The tests' real OpenSSH server: :mod:`broker.dev.local_sshd` (shared with ``conduit demo``)."""

from __future__ import annotations

from broker.dev.local_sshd import (
    SSHD,
    RunningSshd,
    SshdError,
    sshd_available,
    start_sshd,
)

__all__ = ["SSHD", "RunningSshd", "SshdError", "sshd_available", "start_sshd"]
