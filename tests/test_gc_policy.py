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
