"""Users as pages show them: the display name, with the user id on hover.

One lookup for every page (sessions, recordings, audit, approvals, grants, users):
:func:`people` maps user ids to :class:`Person` (name, else e-mail, else the IdP subject);
templates render one with the ``person`` macro of ``view_macros.html``
(``<span class="person" title="ID">NAME</span>``). An id with no user row (a deleted user,
or an audit actor that is not a user such as ``system`` or ``agent:…``) is shown as itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlmodel import Session, col, select

from sessions.models import User


@dataclass(frozen=True)
class Person:
    id: str
    name: str

    def __str__(self) -> str:
        return self.name


def display_name(user: User) -> str:
    """What a person is called on every page and in the CLI's listings."""
    return user.name or user.email or user.sub


def person_of(user: User) -> Person:
    return Person(user.id, display_name(user))


def people(db: Session, ids: Iterable[str | None]) -> dict[str, Person]:
    """Every id in ``ids`` (None skipped) to its Person; unknown ids map to themselves."""
    wanted = {i for i in ids if i}
    found = (
        {u.id: person_of(u) for u in db.exec(select(User).where(col(User.id).in_(wanted)))}
        if wanted
        else {}
    )
    return {i: found.get(i, Person(i, i)) for i in wanted}
