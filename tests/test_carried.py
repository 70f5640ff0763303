"""Folds carried from request to request give what a fold over the whole list gives.

The store's rows of an account arrive mostly in time order, but an event can come late
(older than rows already held), a request can be older than the previous one, the
window slides, an account can be forgotten and seen again. Each request here folds the
visible rows through :class:`CarriedFolds` and from scratch, and the states must agree.
"""

from __future__ import annotations

import random
from bisect import bisect_left

import pytest

from aml_pipeline.features.carried import CarriedFolds

WINDOW = 50


def fold_all(rows) -> list:
    return [r[0] for r in rows]  # the state of a fold that keeps every event id in order


def carried(head: bool = False) -> CarriedFolds:
    """Keeps every event id in order; a head keeps a placeholder for the rows it takes."""
    return CarriedFolds(list, lambda state, r, _also: state.append(r[0]), capacity=3,
                        head=(lambda state, rows, _also: state.extend("-" for _ in rows)) if head else None)


def visible(held: list, t: int) -> list:
    """The rows a request at t sees: [t - WINDOW, t), time-ordered, arrival order within an instant."""
    times = [r[1] for r in held]
    return held[bisect_left(times, t - WINDOW):bisect_left(times, t)]


@pytest.mark.parametrize("head", [False, True])
def test_a_carried_fold_equals_the_fold_over_every_visible_row(head):
    rng = random.Random(7)
    folds = carried(head)
    held: dict[str, list] = {a: [] for a in "ABCDE"}
    now, n = 0, 0
    for step in range(3000):
        acc = rng.choice("ABCDE")
        r = rng.random()
        if r < 0.05:  # a late row, among rows already folded
            t = max(0, now - rng.randrange(1, 30))
        elif r < 0.08:  # the account forgotten, then seen again
            held[acc] = []
            continue
        else:
            now += rng.choice([0, 0, 1, 2, 5])  # same-instant rows too
            t = now
        n += 1
        ask = t if rng.random() < 0.9 else max(0, t - rng.randrange(1, 20))  # sometimes an older request
        rows = visible(held[acc], ask)
        until = ask - WINDOW // 2 if head else -1  # what this request reads: rows from here on
        state = folds.through(acc, rows, ask, head_until=until if head else None)
        read = [k for k, r in enumerate(rows) if r[1] >= until]
        assert [state[len(state) - len(rows) + k] for k in read] == [fold_all(rows)[k] for k in read], step
        row = (f"e{n}", t)
        i = bisect_left([x[1] for x in held[acc]], t + 1)  # after the same instant's rows: arrival order
        held[acc].insert(i, row)
    assert folds.restarts > 50 and folds.folded < 3000 * WINDOW / 4  # it did carry, and did restart


def test_a_late_row_restarts_the_fold():
    folds = carried()
    rows = [("a", 1), ("b", 2), ("c", 3)]
    assert folds.through("A", rows, 4) == ["a", "b", "c"]
    rows2 = rows + [("d", 5)]
    assert folds.through("A", rows2, 6) == ["a", "b", "c", "d"] and folds.restarts == 1
    late = [("a", 1), ("x", 2), ("b", 2), ("c", 3), ("d", 5)]  # x came late, at an instant already folded
    assert folds.through("A", late, 6) == ["a", "x", "b", "c", "d"] and folds.restarts == 2
    older = [r for r in late if r[1] < 3]
    assert folds.through("A", older, 3) == ["a", "x", "b"] and folds.restarts == 3  # a request older than the fold


@pytest.mark.parametrize("head", [False, True])
def test_a_fold_that_reads_a_second_list_restarts_when_that_list_changes_behind_it(head):
    """Each payment's value counts the account's inflows in the 10 before it: a late inflow
    among those the fold had seen must start it again; later inflows just join."""
    rng = random.Random(11)

    def step(state, r, also):
        times = [x[1] for x in also]
        state.append((r[0], bisect_left(times, r[1]) - bisect_left(times, r[1] - 10)))

    def first_rows(state, rows, also):
        for r in rows:
            step(state, r, also)

    folds = CarriedFolds(list, step, capacity=2, head=first_rows if head else None)
    sent: dict[str, list] = {a: [] for a in "ABC"}
    got: dict[str, list] = {a: [] for a in "ABC"}
    now, n = 0, 0
    for i in range(3000):
        acc = rng.choice("ABC")
        now += rng.choice([0, 1, 2, 4])
        late = rng.random() < 0.05
        t = max(0, now - rng.randrange(1, 25)) if late else now
        rows, also = visible(sent[acc], now), visible(got[acc], now)
        since = now - WINDOW
        state = folds.through(acc, rows, now, since=since, also=also, head_until=now - 20 if head else None)
        want = [(r[0], sum(1 for x in also if r[1] - 10 <= x[1] < r[1])) for r in rows]
        checked = [k for k, r in enumerate(rows) if r[1] - 10 >= since]  # their 10 before are all visible
        assert [state[len(state) - len(rows) + k] for k in checked] == [want[k] for k in checked], i
        n += 1
        table = got if rng.random() < 0.5 else sent
        times = [x[1] for x in table[acc]]
        table[acc].insert(bisect_left(times, t + 1), (f"e{n}", t))
    assert folds.restarts > 50
