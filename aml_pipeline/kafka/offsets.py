"""Offsets: Spark's JSON layout, the special offsets, and how a range is resolved and capped.

An offset map is Spark's own JSON layout, ``{"topic": {"partition": next_offset}}``
(:data:`Offsets`); inside the connector it is ``{(topic, partition): next_offset}``.
``startingOffsets`` / ``endingOffsets`` use :data:`EARLIEST` (-2) and :data:`LATEST` (-1)
for a partition's low and high watermark, as in Spark.
"""

from __future__ import annotations

from typing import Mapping

from aml_pipeline.errors import ConfigError

#: Spark's special offsets in ``startingOffsets`` / ``endingOffsets`` JSON.
EARLIEST, LATEST = -2, -1

#: Spark's JSON offsets: topic -> partition (as a string) -> offset.
Offsets = dict[str, dict[str, int]]

#: A topic-partition.
TP = tuple[str, int]


def to_json(offsets: Mapping[TP, int]) -> Offsets:
    """``{(topic, partition): offset}`` -> Spark's JSON layout, sorted."""
    out: Offsets = {}
    for (topic, part), off in sorted(offsets.items()):
        out.setdefault(topic, {})[str(part)] = int(off)
    return out


def from_json(offsets: Mapping[str, Mapping[str, int]] | None) -> dict[TP, int]:
    """Spark's JSON layout (or None) -> ``{(topic, partition): offset}``."""
    return {(t, int(p)): int(o) for t, parts in (offsets or {}).items() for p, o in parts.items()}


def resolve(spec: str | Offsets, marks: dict[TP, tuple[int, int]], name: str) -> dict[TP, int]:
    """Turn ``earliest`` / ``latest`` / JSON into concrete offsets for the partitions in
    ``marks`` (``{tp: (low, high)}`` watermarks); ``name`` is the option, for the error."""
    if spec == "earliest":
        return {tp: low for tp, (low, _) in marks.items()}
    if spec == "latest":
        return {tp: high for tp, (_, high) in marks.items()}
    given = from_json(spec)  # type: ignore[arg-type]
    missing = sorted(set(marks) - set(given))
    if missing:
        raise ConfigError(f"option {name} must list every partition of the subscribed topics; "
                          f"missing {', '.join(f'{t}-{p}' for t, p in missing)}")
    out = {}
    for tp, off in given.items():
        low, high = marks.get(tp, (0, 0))
        out[tp] = low if off == EARLIEST else high if off == LATEST else off
    return out


def prorate(start: dict[TP, int], end: dict[TP, int], limit: int) -> dict[TP, int]:
    """Cap the range at ``limit`` records, shared between partitions by their backlog (as Spark)."""
    lag = {tp: max(0, end[tp] - start.get(tp, end[tp])) for tp in end}
    total = sum(lag.values())
    if total <= limit:
        return end
    take = {tp: (n * limit) // total for tp, n in lag.items()}
    left = limit - sum(take.values())
    for tp in sorted(lag, key=lambda k: (-(lag[k] - take[k]), k)):
        if left <= 0:
            break
        if take[tp] < lag[tp]:
            take[tp] += 1
            left -= 1
    return {tp: start.get(tp, end[tp]) + take[tp] for tp in end}
