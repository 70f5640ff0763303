"""summary.json of a data run: the layout every engine writes and the table it prints.

Each engine (polars in :mod:`aml_pipeline.engines.polars`, Spark in :mod:`aml_pipeline.spark.tasks`)
counts its own way; the record and its printout are one piece of code, so the two files
cannot drift apart.
"""

from __future__ import annotations

from aml_pipeline.progress import table
from aml_pipeline.sources.base import Source


def summary_record(source: Source, r, *, positives: int, negatives: int, typologies: dict[str, int],
                   time_range: list[str] | None, accounts: int, jurisdictions: dict[str, int],
                   seconds: float, outputs: dict[str, str]) -> dict:
    """The summary.json layout, shared by every engine (each computes the counts its own way)."""
    return {
        "source": source.name,
        "description": source.describe(),
        "rows_read": r.rows_read,
        "rows_valid": r.rows_valid,
        "rows_quarantined": r.rows_quarantined,
        "reconciles": r.reconciles(),
        "quarantined_by_reason": dict(sorted(r.by_reason.items(), key=lambda kv: -kv[1])),
        "labels": {"positive": positives, "negative": negatives, "unknown": r.rows_valid - positives - negatives},
        "label_rate": positives / (positives + negatives) if positives + negatives else None,
        "typologies": typologies,
        "time_range": time_range,
        "accounts": accounts,
        "jurisdictions": jurisdictions,
        "seconds": round(seconds, 3),
        "outputs": outputs,
    }


def print_summary(s: dict) -> None:
    rows = [
        ("source", s["description"]),
        ("rows read", f"{s['rows_read']:,}"),
        ("valid", f"{s['rows_valid']:,}"),
        ("quarantined", f"{s['rows_quarantined']:,}"),
    ]
    rows += [(f"  {k}", f"{v:,}") for k, v in s["quarantined_by_reason"].items()]
    rate = s["label_rate"]
    rows.append(("label rate", "n/a" if rate is None else f"{rate:.4%} ({s['labels']['positive']:,} positive)"))
    rows += [(f"  {k}", f"{v:,}") for k, v in s["typologies"].items()]
    if s["time_range"]:
        rows.append(("time range", f"{s['time_range'][0][:16]} .. {s['time_range'][1][:16]}"))
    rows.append(("accounts", f"{s['accounts']:,}"))
    lf = s.get("labels_file")
    if lf:
        rows.append(("labels file", f"{lf['events_matched']:,} events labelled ({lf['changed']:,} changed, "
                                    f"{lf['added']:,} added); {lf['given_later']:,} given after {lf['as_of'][:19]} "
                                    f"left out; {lf['not_in_data']:,} not in the data"))
    rows.append(("took", f"{s['seconds']:.1f}s"))
    rows.append(("validated", s["outputs"]["validated"]))
    rows.append(("quarantine", s["outputs"]["quarantine"]))
    table("data: " + ("counts reconcile" if s["reconciles"] else "COUNTS DO NOT RECONCILE"), rows)
