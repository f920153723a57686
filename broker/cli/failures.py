"""How the ``conduit`` command ends on an error: one line on stderr and a non-zero exit code.

:func:`describe` maps every error a command can end with to ``(message, exit_code)``; the entry
point (:func:`broker.cli.main`) is the only place that catches, so commands just raise. The
package error trees (:class:`broker.runtime.errors.BrokerError`,
:class:`sessions.errors.SessionsError`,
:class:`policies.errors.PolicyError`), broker connection failures, database driver errors and
``OSError`` get messages that say what failed; anything else is reported as an internal error
whose traceback ``conduit --debug`` shows. Messages are folded into one line.
"""

from __future__ import annotations

import errno
import sys

EXIT_ERROR = 2  # the command could not do its job (bad input, refused, unreachable)
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug; `--debug` shows the traceback
EXIT_INTERRUPTED = 130


def one_line(text: str) -> str:
    """``text`` with its lines joined: ``"a:\\n  - b\\n  - c"`` becomes ``"a: b; c"``."""
    parts = [p.strip().removeprefix("- ").strip() for p in str(text).splitlines()]
    parts = [p for p in parts if p]
    if not parts:
        return ""
    head, rest = parts[0], parts[1:]
    if not rest:
        return head
    joiner = " " if head.endswith(":") else "; "
    return head + joiner + "; ".join(rest)


def _os_error(exc: OSError) -> str:
    what = exc.strerror or type(exc).__name__
    if exc.filename is not None:
        return f"cannot use {exc.filename}: {what}"
    if exc.errno == errno.EADDRINUSE:
        return f"address already in use: {what}"
    return f"system error: {what}"


def _database_error(exc: BaseException) -> str | None:
    sa_exc = sys.modules.get("sqlalchemy.exc")
    if sa_exc is None or not isinstance(exc, sa_exc.SQLAlchemyError):
        return None
    detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    if "no such table" in detail or ("relation" in detail and "does not exist" in detail):
        return (
            "the database has no Conduit tables: run `conduit db upgrade` "
            f"or pass the right --database-url ({detail})"
        )
    return f"database error: {detail}; check --database-url and that the database is running"


def _http_error(exc: BaseException) -> str | None:
    httpx = sys.modules.get("httpx2")
    if httpx is None or not isinstance(exc, httpx.HTTPError):
        return None
    return f"HTTP request failed: {type(exc).__name__}: {exc}"


def describe(exc: BaseException) -> tuple[str, int]:
    """The one-line message (without the ``conduit:`` prefix) and exit code for ``exc``."""
    from broker.runtime.errors import BrokerError

    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED
    if isinstance(exc, BrokerError):
        return one_line(exc.message), EXIT_ERROR
    sessions_errors = sys.modules.get("sessions.errors")
    if sessions_errors is not None and isinstance(exc, sessions_errors.SessionsError):
        return one_line(exc.message), EXIT_ERROR
    policy_errors = sys.modules.get("policies.errors")
    if policy_errors is not None and isinstance(exc, policy_errors.PolicyError):
        problems = getattr(exc, "problems", [])
        return one_line("\n".join([f"{exc.message}:", *problems]) if problems else exc.message), (
            EXIT_ERROR
        )
    message = _database_error(exc) or _http_error(exc)
    if message is not None:
        return one_line(message), EXIT_ERROR
    if isinstance(exc, OSError):
        return one_line(_os_error(exc)), EXIT_ERROR
    detail = one_line(str(exc)) or "no details"
    return (
        f"internal error ({type(exc).__name__}: {detail}); "
        "run `conduit --debug ...` for the traceback and report it",
        EXIT_INTERNAL,
    )
