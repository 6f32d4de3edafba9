"""Roles per project and what a caller's grants add up to in one project.

A grant names a project, a role and (optionally) the views or feature services it covers:

- ``reader``: online reads of the listed views / feature services (default: all of them);
- ``writer``: a reader of the same views, and push / write of them;
- ``admin``: everything in the project, plus the admin routes (keys, reload, snapshots,
  materialize).

The roles nest (admin > writer > reader), so one caller's grants in a project add up to one
read scope, one write scope and an admin flag: exactly what an API key record already holds,
which is why a token's grants become the same :class:`~serving.frontend.auth.Principal` a key
does and the serving path does not know which one it got.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from serving.errors import InvalidArgumentError

ROLES: tuple[str, ...] = ("reader", "writer", "admin")
ALL = "*"


@dataclass(frozen=True)
class Grant:
    """One role in one project (``project = "*"``: in every project this server serves)."""

    project: str
    role: str
    #: views / feature services covered (``("*",)``: all)
    views: tuple[str, ...] = (ALL,)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidArgumentError(
                f"unknown role '{self.role}': expected one of {', '.join(ROLES)}"
            )
        if not self.project:
            raise InvalidArgumentError("a grant needs a project ('*' for every project)")

    def covers(self, project: str) -> bool:
        return self.project in (ALL, project)


@dataclass(frozen=True)
class Rights:
    """What a caller may do in one project: read scope, write scope, admin."""

    read: tuple[str, ...]
    write: tuple[str, ...]
    admin: bool
    #: the highest role held ("" = none: the caller has no role in the project)
    role: str

    @property
    def any(self) -> bool:
        return bool(self.role)


def _merge(scopes: Iterable[Sequence[str]]) -> tuple[str, ...]:
    out: list[str] = []
    for scope in scopes:
        for name in scope:
            if name == ALL:
                return (ALL,)
            if name not in out:
                out.append(name)
    return tuple(sorted(out))


def rights(grants: Iterable[Grant], project: str) -> Rights:
    """The union of ``grants`` in ``project``."""
    mine = [g for g in grants if g.covers(project)]
    if not mine:
        return Rights((), (), False, "")
    if any(g.role == "admin" for g in mine):
        return Rights((ALL,), (ALL,), True, "admin")
    read = _merge(g.views for g in mine)
    write = _merge(g.views for g in mine if g.role == "writer")
    return Rights(read, write, False, "writer" if write else "reader")


def role_of(read: Sequence[str], write: Sequence[str], admin: bool) -> str:
    """The role an API key record amounts to (keys made before roles existed)."""
    if admin:
        return "admin"
    if write:
        return "writer"
    return "reader" if read else ""
