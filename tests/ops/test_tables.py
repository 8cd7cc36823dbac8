"""rlhfkit/ops/tables.py: a named variant picked from a dict, or one clear error."""
import pytest

from rlhfkit.ops.tables import pick

TABLE = {"k2": "second", "k1": "first"}


def test_pick_returns_the_entry():
    assert pick(TABLE, "k1", "kl_estimator") == "first"
    assert pick({False: 0, True: 1}, True, "sequence_kl") == 1  # any hashable key


def test_pick_names_what_was_asked_and_the_sorted_allowed_names():
    with pytest.raises(ValueError) as error:
        pick(TABLE, "k4", "kl_estimator")
    assert str(error.value) == "unknown kl_estimator 'k4'; allowed: ['k1', 'k2']"
    assert error.value.__cause__ is None and error.value.__suppress_context__  # no KeyError chain
