"""Test modules have unique names: pytest imports them by basename (no packages under tests/), so a second
tests/**/test_x.py stops the whole run at collection."""

from collections import Counter
from pathlib import Path


def test_test_module_names_are_unique():
    names = Counter(p.name for p in (Path(__file__).parents[1]).rglob("test_*.py"))
    assert not [n for n, k in names.items() if k > 1], [n for n, k in names.items() if k > 1]
