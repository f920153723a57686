"""The policies package's error tree; every error has a machine-readable ``code``."""

from __future__ import annotations


class PolicyError(Exception):
    """Base of every error raised on purpose by :mod:`policies`."""

    code = "policy_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BundleError(PolicyError):
    """A bundle cannot be loaded: unreadable file, parse or compile error, failing tests.

    ``problems`` lists human-readable lines, each starting with ``file:line`` where known.
    """

    code = "bundle_invalid"

    def __init__(
        self, message: str, problems: list[str] | None = None, *, code: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.problems = list(problems or [])


class EngineUnavailable(PolicyError):
    """The decision point could not be asked (server down, timeout, no bundle loaded)."""

    code = "engine_unavailable"
