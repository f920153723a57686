"""The one user lookup behind every page: display name (name, e-mail, subject), id kept."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from broker.runtime.people import Person, people
from sessions.db import session_scope
from sessions.identity import Identity, upsert_user
from sessions.testing import ManualClock


def test_names_fall_back_and_unknown_ids_stay_themselves(engine: sa.Engine) -> None:
    clock = ManualClock(datetime.now(UTC))
    with session_scope(engine, write=True) as db:
        named = upsert_user(db, Identity("https://idp", "s-1", "a@x.example", "Ann"), [], clock)
        mailed = upsert_user(db, Identity("https://idp", "s-2", "b@x.example", None), [], clock)
        bare = upsert_user(db, Identity("https://idp", "s-3", None, None), [], clock)
        ids = (named.id, mailed.id, bare.id)
    with session_scope(engine) as db:
        found = people(db, [*ids, "system", None, ""])
    assert found == {
        ids[0]: Person(ids[0], "Ann"),
        ids[1]: Person(ids[1], "b@x.example"),
        ids[2]: Person(ids[2], "s-3"),
        "system": Person("system", "system"),
    }
    with session_scope(engine) as db:
        assert people(db, []) == {}
