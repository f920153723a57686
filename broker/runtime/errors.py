"""The broker's error tree. Every error carries a machine-readable ``code`` and an HTTP status.

Messages name the operation that failed and never contain secrets: they are shown to users
and written to the audit log as they are.
"""

from __future__ import annotations


class BrokerError(Exception):
    """Base of every error the broker raises on purpose."""

    code = "broker_error"
    status = 500

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class SettingsError(BrokerError):
    """Settings are missing, malformed or insecure; the broker must not start."""

    code = "invalid_settings"


class AuthError(BrokerError):
    """A sign-in attempt or credential was rejected (bad token, state, nonce, ...)."""

    code = "auth_rejected"
    status = 400


class NotAuthenticated(BrokerError):
    """No valid web session or bearer token."""

    code = "not_authenticated"
    status = 401


class Forbidden(BrokerError):
    """Authenticated, but the user's roles do not allow this."""

    code = "forbidden"
    status = 403


class IdpUnavailable(BrokerError):
    """The identity provider could not be reached or answered nonsense."""

    code = "idp_unavailable"
    status = 503


class BadRequest(BrokerError):
    """The request itself is malformed."""

    code = "bad_request"
    status = 400
