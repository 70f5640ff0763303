"""The long-running scorers' garbage-collector policy (aml_pipeline/gc_policy.py)."""

from __future__ import annotations

import gc
import weakref

import pytest

from aml_pipeline import gc_policy


@pytest.fixture
def policy():
    gc_policy.freeze_long_lived()
    yield
    gc.callbacks.remove(gc_policy._freeze_after_full)
    gc.unfreeze()


class Node:
    def __init__(self):
        self.other = None


def test_survivors_of_a_full_collection_are_frozen_and_garbage_is_not(policy):
    frozen = gc.get_freeze_count()
    kept = [[i] for i in range(5_000)]  # long-lived: an account's fold, say
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle, then dropped: only the collector can free it
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None  # the cycle was collected, not frozen
    assert gc.get_freeze_count() >= frozen + len(kept)  # the survivors were frozen
    assert gc.get_count()[2] == 0 and len(gc.get_objects(generation=2)) == 0  # nothing left to walk
    gc_policy.freeze_long_lived()  # a second call adds no second hook
    assert gc.callbacks.count(gc_policy._freeze_after_full) == 1


def test_a_cycle_among_frozen_objects_is_collected_by_the_periodic_thaw(policy, monkeypatch):
    """An object frozen while reachable that later becomes part of a garbage cycle is kept
    until a full collection walks everything again: the THAW_EVERY-th one."""
    monkeypatch.setattr(gc_policy, "THAW_EVERY", 3)
    gc_policy._full_collections[0] = 0
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    gc.collect()  # 1st: a and b are reachable, and frozen after it
    del a, b  # a garbage cycle of frozen objects
    gc.collect()  # 2nd: frozen objects are not walked
    assert gone() is not None
    gc.collect()  # 3rd: thawed first, so the cycle is found
    assert gone() is None
    assert gc.get_freeze_count() > 0  # and what survived is frozen again
