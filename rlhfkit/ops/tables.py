"""Named variants picked from a dict (house style: one function per variant, no ``if`` chain).

Tests: tests/ops/test_tables.py.
"""
from __future__ import annotations

from typing import Mapping, TypeVar

Entry = TypeVar("Entry")


def pick(table: Mapping[object, Entry], name: object, what: str) -> Entry:
    """``table[name]``, or a ValueError naming ``what`` was asked and the allowed names (sorted).

    E.g. pick(KL_ESTIMATORS, "k4", "kl_estimator") raises
    ``unknown kl_estimator 'k4'; allowed: ['k1', 'k2', 'k3']``.
    """
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; allowed: {sorted(map(str, table))}") from None
