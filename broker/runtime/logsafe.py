"""Keep secrets out of the server's logs.

Query strings carry one-time secrets (OAuth ``code`` and ``state``, CLI user codes), so the
access log records the path only. Install with :func:`install` before uvicorn starts.
"""

from __future__ import annotations

import logging


class DropQueryStrings(logging.Filter):
    """Rewrites uvicorn access records ``(client, method, path?query, version, status)``."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], args[2].split("?", 1)[0], args[3], args[4])
        return True


def install() -> None:
    """Attach the filter to uvicorn's access logger (idempotent)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, DropQueryStrings) for f in access.filters):
        access.addFilter(DropQueryStrings())
