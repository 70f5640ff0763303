"""What a stream's checkpoint was started with, and the deliberate way to start over.

Why: a checkpoint holds the source positions, the held events, the counts, the alert
budget's state and (embedded store) the store's rows, all computed under one configuration.
A restart with another bundle would put two models' alert ids in one stream; another
lateness would move a watermark other events were judged against; another budget, store
or source would continue from state that does not belong to it. Spark's own checkpoint
notices few of these, and then with a long Java trace.

So the first start records a **fingerprint** in ``<checkpoint>/fingerprint.json`` (written
durably before the query starts): the bundle's hash, the feature plan's hash, the allowed
lateness, the alert budget, the state mode, the store (backend and location, passwords
masked), the source (directory or topic) and, on Kafka, the connector. Every later start
compares; once the checkpoint holds a micro-batch (Spark planned one, or the scorer committed
one), any difference refuses the start in one line naming each changed part and the ways
on: restore it, use another ``deploy.checkpoint``, or ``deploy.reset=true``, which
clears this checkpoint (Spark's offsets, the scorer's state, the fingerprint) and starts
the stream over. Options that do not change what a committed batch means (trigger, batch
sizes, ``progress``, ``explain``, threads) are not part of it.

With the Redis store the fingerprint also keeps the store's **epoch** (a random id the store
writes when it finds itself empty; :mod:`aml_pipeline.store.redis_store`): a Redis that lost
its data while the scorer was down has a new one, and the start is refused rather than
scoring on empty history (the scorer checks it again in every micro-batch).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from aml_pipeline.config import option_value
from aml_pipeline.errors import UserError
from aml_pipeline.features.windows import duration_us
from aml_pipeline.jsonl import replace_durably
from aml_pipeline.secrets import redact_url
from aml_pipeline.store import _short

FINGERPRINT = "fingerprint.json"
#: The fingerprint's parts, in the order a refusal names them, with how the message calls them.
PARTS = {
    "bundle_hash": "bundle (sha256)",
    "plan_hash": "feature plan (sha256)",
    "allowed_lateness": "deploy.allowed_lateness",
    "budget": "deploy.budget",
    "state": "deploy.state",
    "store": "deploy.store",
    "source": "source",
    "connector": "deploy.connector",
}
#: What deploy.reset=true removes under the checkpoint.
RESET_PARTS = ("spark", "scorer", "control", FINGERPRINT)


def fingerprint(cfg: DictConfig, bundle, source: str, store_location: str) -> dict[str, str]:
    """The parts of :data:`PARTS` for this configuration, as short comparable texts
    (durations normalised: ``24h`` and ``1d`` are the same)."""
    d = cfg.deploy
    plan = json.dumps(bundle.plan.to_dict(), sort_keys=True, default=str)
    cap = int(d.budget.cap)
    budget = "off (cap 0)" if cap == 0 else f"{d.budget.key} {_short(duration_us(str(d.budget.window)))} cap {cap}"
    if source == "file":
        src = f"files {Path(str(d.input)).resolve()}"
    else:
        src = f"kafka topic {d.topics.input}"
    out = {
        "bundle_hash": str(bundle.bundle_hash or ""),
        "plan_hash": hashlib.sha256(plan.encode()).hexdigest(),
        "allowed_lateness": _short(duration_us(str(d.allowed_lateness))),
        "budget": budget,
        "state": str(option_value(d.get("state", "store"))),
        "store": store_location,
        "source": src,
    }
    if source == "kafka":
        out["connector"] = str(option_value(d.connector))
    return out


def store_location(store_cfg, state: str) -> str:
    """The store part of the fingerprint: backend and where its data is (no password)."""
    if state == "spark":
        return "spark state (RocksDB, in the checkpoint)"
    backend = str(option_value(store_cfg.backend))
    if backend == "redis":
        return f"redis {redact_url(str(store_cfg.redis_url))} prefix {store_cfg.prefix}"
    return "memory (rebuilt from the checkpoint)"


def _shown(part: str, value: Any) -> str:
    text = "none" if value is None else str(value)
    return text[:12] + "…" if part.endswith("_hash") and len(text) > 12 else text


def reset(cfg: DictConfig, source: str) -> list[str]:
    """``deploy.reset=true``: remove what :data:`RESET_PARTS` names under the checkpoint.

    Refused (one line) when file outputs of an earlier run are still in ``deploy.output``:
    the new run numbers its micro-batches from 0 again and would replace them part by part.
    Kafka outputs are appended, so they stay. The Redis store is not flushed (other scorers
    may share it): a notice says so. Returns what was removed."""
    d = cfg.deploy
    root = Path(str(d.checkpoint))
    if source == "file":
        out = Path(str(d.output))
        parts = sorted(p for p in out.glob("*/part-*") if p.is_file()) if out.is_dir() else []
        if parts:
            raise UserError(f"deploy.reset=true: deploy.output={out} still holds {len(parts)} output file(s) of the earlier "
                            "run, which the new run would overwrite; move them away or set another deploy.output first")
    removed = []
    for name in RESET_PARTS:
        p = root / name
        if p.is_dir():
            shutil.rmtree(p)
            removed.append(name)
        elif p.exists():
            p.unlink()
            removed.append(name)
    what = ", ".join(removed) if removed else "nothing there yet"
    print(f"deploy.reset=true: cleared {root} ({what}); the stream starts over", file=sys.stderr, flush=True)
    store = d.get("store")
    if store is not None and str(option_value(d.get("state", "store"))) == "store" and str(option_value(store.backend)) == "redis":
        print(f"deploy.reset=true: the Redis store ({redact_url(str(store.redis_url))}, prefix {store.prefix}) keeps its "
              "rows; events it already holds are dead letters as duplicates: use a new deploy.store.prefix to start it "
              "over too", file=sys.stderr, flush=True)
    return removed


def load(checkpoint: str | Path) -> dict[str, Any] | None:
    p = Path(checkpoint) / FINGERPRINT
    return json.loads(p.read_text()) if p.is_file() else None


def _has_state(root: Path) -> bool:
    """The checkpoint holds a micro-batch: the scorer's state, or Spark's offsets (a batch planned)."""
    return (root / "scorer" / "state.json").is_file() or any((root / "spark" / "offsets").glob("*"))


def settle(cfg: DictConfig, bundle, source: str, store_epoch: str | None = None) -> dict[str, Any]:
    """Reset if asked, then record this configuration's fingerprint in a new checkpoint or
    refuse a start whose fingerprint (or Redis epoch) differs from the recorded one.

    Returns ``{"fingerprint": ..., "recorded": bool, "reset": [removed parts]}``."""
    d = cfg.deploy
    root = Path(str(d.checkpoint))
    removed = reset(cfg, source) if bool(d.get("reset", False)) else []
    state = str(option_value(d.get("state", "store")))
    mine = fingerprint(cfg, bundle, source, store_location(d.get("store"), state))
    saved = load(root)
    if saved is None:
        if _has_state(root):
            print(f"checkpoint {root} has no fingerprint (made by an earlier version): recording this run's",
                  file=sys.stderr, flush=True)
        record = {"parts": mine, "store_epoch": store_epoch}
        root.mkdir(parents=True, exist_ok=True)
        replace_durably(root / FINGERPRINT, json.dumps(record, indent=1, sort_keys=True) + "\n")
        return {"fingerprint": mine, "recorded": True, "reset": removed}
    theirs = saved.get("parts", {})
    changed = [f"{label} {_shown(k, theirs.get(k))} -> {_shown(k, mine.get(k))}"
               for k, label in PARTS.items() if theirs.get(k) != mine.get(k)]
    if changed and not _has_state(root):  # an earlier start that never reached a micro-batch: nothing to protect
        print(f"checkpoint {root} holds no micro-batch yet: its fingerprint is this run's ({'; '.join(changed)})",
              file=sys.stderr, flush=True)
        replace_durably(root / FINGERPRINT, json.dumps({"parts": mine, "store_epoch": store_epoch}, indent=1,
                                                       sort_keys=True) + "\n")
        return {"fingerprint": mine, "recorded": True, "reset": removed}
    if changed:
        raise UserError(f"deploy.checkpoint={root} was started with another configuration: {'; '.join(changed)}; "
                        "restore it, use a new deploy.checkpoint, or start the stream over with deploy.reset=true")
    known = saved.get("store_epoch")
    if known and store_epoch != known:
        raise UserError(f"store {mine['store']}: its data is not the data this checkpoint was scored against (epoch "
                        f"{known[:8]}…, now {(store_epoch or 'none')[:8]}…: Redis was flushed or restarted without "
                        "persistence); restore its data, or start the stream over with deploy.reset=true (the store is "
                        "warmed again from deploy.warm_from)")
    if store_epoch and not known:  # recorded before the store kept one
        replace_durably(root / FINGERPRINT, json.dumps({**saved, "store_epoch": store_epoch}, indent=1, sort_keys=True) + "\n")
    return {"fingerprint": mine, "recorded": False, "reset": removed}
