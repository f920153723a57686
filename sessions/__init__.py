"""Conduit's domain core: people, assets, access, sessions, recordings and the audit chain.

Storage lives in ``sessions.models`` (SQLModel tables, created by the Alembic migrations in
``sessions/migrations`` via :func:`sessions.db.migrate`); the audit chain in ``sessions.audit``;
errors in ``sessions.errors``; time in ``sessions.clock``; test fakes in ``sessions.testing``.
No web code and no imports from ``broker``.
"""
