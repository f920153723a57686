"""The sessions package's error tree.

Every error raised on purpose by ``sessions`` is a :class:`SessionsError`.  Each class carries a
stable, machine-readable ``code`` (the broker maps it to HTTP statuses and API error bodies);
messages are for humans and name the operation that failed.  Database driver errors are
translated at the package boundary (see :func:`sessions.db.translate_db_error`) and kept as
``__cause__``.
"""

from __future__ import annotations


class SessionsError(Exception):
    """Base of every error raised by the sessions package.

    ``code`` defaults to the class attribute; pass ``code=`` to refine it for one occurrence
    (e.g. ``ValidationError("...", code="invalid_timezone")``).
    """

    code: str = "sessions_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class NotFoundError(SessionsError):
    """The requested object does not exist (or is not visible to the caller)."""

    code = "not_found"


class ConflictError(SessionsError):
    """The change collides with existing state: a unique key, a reference, a state transition."""

    code = "conflict"


class ValidationError(SessionsError):
    """The input is malformed or breaks a domain rule (range, enumeration, CHECK constraint)."""

    code = "invalid"


class StorageError(SessionsError):
    """The database failed or is unreachable; the operation did not take effect."""

    code = "storage"


class AuditIntegrityError(SessionsError):
    """The audit chain cannot be extended or trusted (e.g. a broken link found while appending)."""

    code = "audit_integrity"
