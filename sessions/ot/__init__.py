"""OT protocol inspection as plug-ins: one sans-IO inspector per declared endpoint protocol.

:mod:`sessions.ot.base` holds what every protocol shares (the :class:`~sessions.ot.base.Inspector`
protocol, :class:`~sessions.ot.base.Verdicts`, typed :class:`~sessions.ot.base.Operation`
records, the :class:`~sessions.ot.pacing.TokenBucket`); each protocol is one module
(:mod:`sessions.ot.modbus`, :mod:`sessions.ot.s7`, :mod:`sessions.ot.enip`) exporting a
:class:`~sessions.ot.base.ProtocolPlugin`; :mod:`sessions.ot.registry` maps the endpoint's
declared protocol name to its plug-in.
"""
