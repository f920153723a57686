"""Time as a dependency.

Code that needs "now" takes a :class:`Clock` instead of calling :func:`datetime.now`, so tests
can drive expiry, windows and timestamps deterministically (see
:class:`sessions.testing.ManualClock`). Composition roots (the app, CLI commands) construct a
:class:`SystemClock` and pass it down. Both are defined in :mod:`policies.clock` (the leaf
package, so the policy engines take the same clock) and re-exported here.
"""

from __future__ import annotations

from policies.clock import Clock as Clock
from policies.clock import SystemClock as SystemClock

__all__ = ["Clock", "SystemClock"]
