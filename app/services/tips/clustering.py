"""Account holders: accounts that share a normalised e-mail, phone or username on a
platform are one person. IP addresses are evidence of place, not identity, and never join
holders; neither do common identifiers (a shared test number, say)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

from app.services.identifiers import IdentifierKind

# Plain globals: on Python 3.11 each `IdentifierKind.X` is a descriptor call, and an import asks
# for the keys of every account.
_EMAIL, _PHONE, _USERNAME = IdentifierKind.EMAIL, IdentifierKind.PHONE, IdentifierKind.USERNAME


def joining_keys(platform: str, username: str | None, email: str | None,
                 phone: str | None) -> list[tuple[IdentifierKind, str, str]]:
    """The keys on which an account joins others: (kind, platform or "", normalised value), in
    the order e-mail, phone, username. A username counts only on its own platform."""
    keys = []
    if email:
        keys.append((_EMAIL, "", email))
    if phone:
        keys.append((_PHONE, "", phone))
    if username:
        keys.append((_USERNAME, platform, username))
    return keys


class UnionFind:
    def __init__(self, size: int):
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:  # path compression
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb


def cluster(keys_per_account: Sequence[Iterable[Hashable]], common: set[Hashable] = frozenset()) -> list[int]:
    """For each account, the index of the first account of its holder.

    `keys_per_account[i]` holds the joining keys of account i (e.g. match keys of its
    e-mail, phone and username); keys in `common` are ignored.
    """
    groups = UnionFind(len(keys_per_account))
    first_with_key: dict[Hashable, int] = {}
    for index, keys in enumerate(keys_per_account):
        for key in keys:
            if key in common:
                continue
            other = first_with_key.setdefault(key, index)
            if other != index:
                groups.union(other, index)
    return [groups.find(i) for i in range(len(keys_per_account))]
