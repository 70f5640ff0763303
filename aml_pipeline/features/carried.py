"""Folds over an account's rows carried from one request to the next (per-event forms).

A request sees each of its accounts' rows as a time-ordered list: the store's rows of the
look-back, strictly before the event. Some columns need a value per row that depends only
on that account's earlier rows (is this payer new? did this payment pass an inflow on?),
and recomputing it for every row of a merchant's month on every request is most of the
per-event work. A fold that has already gone through an account's rows up to some time can
go on from there, provided the rows it went through are still exactly the rows the store
holds up to that time: none arrived late among them and none was forgotten. That is
checked with a few bisections per request: from ``since`` (a time from which the request
sees every row) to the fold's last time, the list holds as many rows as the fold went
through, and the last of them is the same event. A fold may also read a second list of
the same account (``also``: the inflows a payment may pass on); then that list must hold,
from ``since`` to the fold's last time, as many rows as the fold had seen there.
Otherwise (first sight of the account, a late row, an account forgotten and seen again,
an event older than the fold) the fold starts again from the list's first row, so every
value is exactly what a fold over the whole list gives.

The folds live in the engine's process (one per step and direction), bounded: the least
recently used accounts' folds are dropped beyond ``capacity``.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable
from itertools import repeat
from operator import itemgetter
from typing import Any

from aml_pipeline.features.windows import FIXED_POINT

#: Row positions of the event id and time (the store's core columns).
ID, T = 0, 1
_BY_TIME = itemgetter(T)


class Fold:
    """One account's fold: the times of the rows it went through (ascending), the id of
    the last, the times of the ``also`` rows before the last, the time before which its
    rows went to ``head`` (None: none did), and what the step keeps."""

    __slots__ = ("times", "last_id", "also_times", "head_until", "state")

    def __init__(self, state: Any):
        self.times: list[int] = []
        self.last_id: Any = None
        self.also_times: list[int] = []
        self.head_until: int | None = None
        self.state = state


def _count(times: list[int], since: int) -> int:
    return len(times) - bisect_left(times, since)


def skip(_state: Any, _rows: list, _also: Any) -> None:
    """The head of a fold whose rows before the head add nothing: only later rows' values
    are read (payments before the habit window, deposits before the widest window)."""


def drop_before(values: list, lo: int, key: Callable[[Any], int] | None = None) -> None:
    """Forget a fold's time-ordered entries before ``lo`` (by ``key``), once there are
    enough of them to be worth the copy: no request reads them any more."""
    if len(values) > 64 and (values[0] if key is None else key(values[0])) < lo:
        del values[:bisect_left(values, lo, key=key)]


class CarriedFolds:
    """Per key (an account and a direction), the fold over its rows so far.

    ``start()`` makes a new fold's state; ``step(state, row, also)`` folds one row in
    (``also``: the request's second list, or None). A fold started afresh may take the rows
    before ``head_until`` (rows whose own values this request will not read, only their
    effect on later rows) in one call, ``head(state, rows, also)``: the first request for
    an account then costs no more than computing without a fold. A later request that
    reads further back than that (an older event) starts the fold again.
    """

    def __init__(self, start: Callable[[], Any], step: Callable[[Any, Any, Any], None], capacity: int = 100_000,
                 head: Callable[[Any, list, Any], None] | None = None):
        self._start, self._step, self._head, self.capacity = start, step, head, int(capacity)
        self._folds: OrderedDict[Any, Fold] = OrderedDict()
        #: rows folded, and folds started again (first sight, a late row, an older event)
        self.folded = self.restarts = 0

    def _carries(self, fold: Fold | None, rows: list, t: int, since: int, also: list | None,
                 head_until: int | None) -> int | None:
        """Where the fold goes on in ``rows`` (None: it must start again)."""
        if fold is None or not fold.times or fold.times[-1] >= t:
            return None
        if fold.head_until is not None and (head_until is None or head_until < fold.head_until):
            return None  # this request reads rows the fold only went through in its head
        last = fold.times[-1]
        j = bisect_right(rows, last, key=_BY_TIME)
        if not j or rows[j - 1][ID] != fold.last_id:
            return None
        first = 0 if since <= rows[0][T] else bisect_left(rows, since, key=_BY_TIME)
        if j - first != _count(fold.times, since):
            return None
        if also is not None and (bisect_left(also, last, key=_BY_TIME) - bisect_left(also, since, key=_BY_TIME)
                                 != _count(fold.also_times, since)):
            return None
        return j

    def through(self, key: Any, rows: list, t: int, since: int | None = None, also: list | None = None,
                head_until: int | None = None) -> Any:
        """The state after folding every one of ``rows`` (time-ordered, all before ``t``);
        the request sees every row of ``rows`` (and ``also``) from ``since`` on (default:
        the first row's time)."""
        fold = self._folds.get(key)
        if since is None:
            since = rows[0][T] if rows else t
        j = self._carries(fold, rows, t, since, also, head_until)
        if j is None:
            fold = self._folds[key] = Fold(self._start())
            self.restarts += 1
            j = 0
            if self._head is not None and head_until is not None:
                j = bisect_left(rows, head_until, key=_BY_TIME)
                fold.head_until = head_until
                self._head(fold.state, rows[:j], also)
                fold.times.extend(map(_BY_TIME, rows[:j]))
                if j:
                    fold.last_id = rows[j - 1][ID]
                    if also is not None:
                        fold.also_times.extend(map(_BY_TIME, also[:bisect_left(also, fold.times[-1], key=_BY_TIME)]))
        else:
            self._folds.move_to_end(key)
        step, state, times = self._step, fold.state, fold.times
        if len(rows) > j:
            before = times[-1] if times else None  # the fold's last time so far
            for r in rows[j:]:
                step(state, r, also)
                times.append(r[T])
            if also is not None:  # the second list's rows from the old last time to the new
                begin = 0 if before is None else bisect_left(also, before, key=_BY_TIME)
                fold.also_times.extend(map(_BY_TIME, also[begin:bisect_left(also, times[-1], key=_BY_TIME)]))
            fold.last_id = rows[-1][ID]
            self.folded += len(rows) - j
        if len(times) > 2 * len(rows) + 64:  # forget the times no request reaches any more
            del times[:bisect_left(times, since)]
            del fold.also_times[:bisect_left(fold.also_times, since)]
        while len(self._folds) > self.capacity:
            self._folds.popitem(last=False)
        return state


class Totals:
    """A fold's running totals of one account's amounts: exact fixed-point running sums
    (``cum``, the first ``base`` dropped) and, for the maximum of any latest rows, the
    rows that are the largest of every row after them (``at``: fold row numbers, ``top``:
    amounts; descending amounts)."""

    __slots__ = ("cum", "base", "at", "top")

    def __init__(self) -> None:
        self.cum: list[int] = [0]
        self.base = 0
        self.at: list[int] = []
        self.top: list[float] = []

    def latest(self, m: int) -> tuple[int, int, float | None]:
        """(count, fixed-point sum, maximum) of the last ``m`` rows folded."""
        if m <= 0:
            return 0, 0, None
        cum = self.cum
        first = self.base + len(cum) - 1 - m  # the fold row number of the first of them
        return m, cum[-1] - cum[first - self.base], self.top[bisect_left(self.at, first)]

    def forget(self, keep: int) -> None:
        """Drop what only rows before the last ``keep`` need (the request's list is no longer)."""
        drop = len(self.cum) - 1 - keep
        if drop > keep + 64:
            del self.cum[:drop]
            self.base += drop
            gone = bisect_left(self.at, self.base)
            del self.at[:gone]
            del self.top[:gone]


def totals_folds(amount: int) -> CarriedFolds:
    """Folds of :class:`Totals` over rows whose amount sits at ``amount``; rows taken by
    the head count as zero (no window a request reads reaches them)."""

    def step(s: Totals, r, _also) -> None:
        a = r[amount]
        s.cum.append(s.cum[-1] + round(a * FIXED_POINT))  # the batch (a * 2**60).round(0); Python rounds half to even too
        at, top = s.at, s.top
        while top and top[-1] <= a:
            top.pop()
            at.pop()
        at.append(s.base + len(s.cum) - 2)
        top.append(a)

    def head(s: Totals, rows, _also) -> None:
        s.cum.extend(repeat(s.cum[-1], len(rows)))

    return CarriedFolds(Totals, step, head=head)
