"""The streaming scorer as users run it: ``python -m aml_pipeline task=stream`` on real Spark
(local[2]), over files, a real Kafka-protocol broker, and the embedded or Redis store.

A small quickstart run (simulator, default plan, LightGBM) gives a bundle and the events;
``task=score`` over all of them is the reference. The test window's events are written as
JSON lines in files whose order is shuffled *within* each file and *across* files (events
arrive after later ones were already in an earlier micro-batch, within the allowed lateness),
with malformed records, duplicates and late events mixed in. The stream, warmed with the
events before the test window, must give every event exactly the reference's feature values
and score, route every other record to the dead letters or the late output, and count them
so that records in = scored + dead-lettered + late.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest

from aml_pipeline.errors import UserError
from aml_pipeline.streaming.budget import AlertBudget
from aml_pipeline.streaming.outputs import read_jsonl
from aml_pipeline.streaming.records import DUPLICATE, UNPARSEABLE, RawRecord, check
from aml_pipeline.validation.rules import build_rules
from tests import stream_driver
from tests.conftest import ROOT, SMALL_RUN, cli_env, compose_config, run_cli, train_small_run

SMALL = SMALL_RUN
NOT_EVENT = ("label", "typology", "instance_id")
LATENESS = "1d"
BUDGET = ["deploy.budget.key=jurisdiction", "deploy.budget.window=1d", "deploy.budget.cap=5"]


def _line(row: dict) -> str:
    return json.dumps({k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items() if k not in NOT_EVENT})


def _stream_files(window: pl.DataFrame, seed: int = 7, per_file: int = 60) -> tuple[list[list[str]], dict]:
    """The test window as files of JSON lines, out of order within and across files, plus bad and late records.

    Returns (files, expected): expected dead-letter reasons by (file index, line) and late event ids.
    """
    rng = random.Random(seed)
    lines = [_line(r) for r in window.iter_rows(named=True)]
    files = [lines[i:i + per_file] for i in range(0, len(lines), per_file)]
    for k in range(len(files) - 1):  # a few events arrive one file later, after later events
        moved = [files[k].pop(rng.randrange(len(files[k]))) for _ in range(4)]
        files[k + 1] += moved
    for f in files:
        rng.shuffle(f)
    first = window.row(0, named=True)
    bad = [
        (1, "not json at all", [UNPARSEABLE]),
        (1, "[1, 2, 3]", [UNPARSEABLE]),
        (2, _line({**first, "event_id": "bad-amount", "amount": -5.0}), ["invalid_amount"]),
        (2, _line({**first, "event_id": "bad-currency", "currency": "XXX"}), ["unknown_currency"]),
        (3, json.dumps({**json.loads(_line(first)), "event_id": "naive-time", "event_time": "2025-01-20T10:00:00"}),
         ["invalid_event_time"]),
        (3, json.dumps({**json.loads(_line(first)), "event_id": "  ", "src_account": None}),
         ["missing_event_id", "missing_src_account"]),
        (4, _line(first), [DUPLICATE]),  # the same event again, three files later
        # hostile records (issue 17): each costs its own record, never the micro-batch
        (1, _line({**first, "event_id": "overflow", "event_time": "9999-12-31T23:59:59-01:00"}), ["invalid_event_time"]),
        (2, json.dumps({**json.loads(_line(first)), "event_id": "label-300", "label": 300}), ["invalid_label"]),
        (2, '{"a":' * 1000 + "1" + "}" * 1000, ["json_too_deep"]),
        (3, _line({**first, "event_id": "from-2100", "event_time": "2100-01-01T00:00:00Z"}), ["event_time_in_future"]),
        (3, json.dumps({**json.loads(_line(first)), "event_id": " ", "merchant": "a\u2028b\u2029c\x85d"}, ensure_ascii=False),
         ["missing_event_id"]),  # one line: U+2028, U+2029 and \x85 do not end it
    ]
    for k, text, _ in bad:
        files[k].insert(len(files[k]) // 2, text)
    # late: new payments stamped one hour into the window, arriving in the last file
    late_ids = []
    for n in range(3):
        e = window.row(10 + n, named=True)
        late_ids.append(f"late-{n}")
        files[-1].append(_line({**e, "event_id": f"late-{n}", "event_time": window["event_time"].min() + timedelta(hours=1)}))
    expected = {"dead": {text: reasons for _, text, reasons in bad}, "late": late_ids}
    return files, expected


def write_files(directory: Path, files: list[list[str]]) -> int:
    """Write the files with increasing modification times (Spark picks the oldest first)."""
    directory.mkdir(parents=True, exist_ok=True)
    t0 = time.time() - 10_000
    for i, lines in enumerate(files):
        p = directory / f"part-{i:04d}.jsonl"
        p.write_text("\n".join(lines) + "\n")
        os.utime(p, (t0 + i, t0 + i))
    return sum(len(f) for f in files)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """data -> features -> train in-process (no MLflow), task=score reference, the stream's input files."""
    from aml_pipeline.bundle import ModelBundle
    from aml_pipeline.tasks import run_task

    d = tmp_path_factory.mktemp("stream_run")
    paths, test_start_text, test_start = train_small_run(d)
    validated = d / "data/validated/transactions.parquet"
    run_task(compose_config([*SMALL, *paths, "task=score", f"bundle={d / 'models/bundle'}", f"input={validated}",
                       f"output={d / 'reference.parquet'}", "scoring.explain=none"]))
    ref = pl.read_parquet(d / "reference.parquet")
    window = pl.read_parquet(validated).filter(pl.col("event_time") >= test_start)
    files, expected = _stream_files(window)
    bundle = ModelBundle.load(d / "models/bundle")
    return SimpleNamespace(dir=d, paths=paths, bundle_dir=d / "models/bundle", validated=validated,
                           test_start=test_start_text, ref={r["event_id"]: r for r in ref.iter_rows(named=True)},
                           window=window, files=files, expected=expected, columns=bundle.feature_columns(), bundle=bundle)


def stream_args(run, name: str, *extra: str) -> list[str]:
    base = run.dir / name
    return ["task=stream", "deploy=file", f"bundle={run.bundle_dir}", "engine.master='local[2]'",
            f"paths.data_dir={base / 'data'}", f"paths.reports_dir={base / 'reports'}",
            f"deploy.input={base / 'in'}", f"deploy.output={base / 'out'}", f"deploy.checkpoint={base / 'checkpoint'}",
            f"deploy.warm_from={run.validated}", f"deploy.warm_until='{run.test_start}'",
            f"deploy.allowed_lateness={LATENESS}", "deploy.write_decisions=true", *BUDGET, *extra]


def decisions_of(out: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in sorted((out / "decisions").glob("part-*.parquet"))])


def assert_parity(run, decisions: pl.DataFrame) -> None:
    assert decisions["event_id"].n_unique() == decisions.height
    for d in decisions.iter_rows(named=True):
        ref = run.ref[d["event_id"]]
        for c in [*run.columns, "score"]:
            e, g = ref[c], d[c]
            if e is None or (isinstance(e, float) and e != e):
                assert g is None or g != g, (d["event_id"], c, e, g)
            else:
                assert g is not None and abs(e - g) <= 1e-9 * max(1.0, abs(e)), (d["event_id"], c, e, g)
        assert d["threshold"] == ref["threshold"] and d["alert"] == ref["alert"]


# ----------------------------------------------------------------------------- fast units
def test_records_follow_the_batch_rules_and_keep_their_position():
    rules = build_rules(["USD"], require_label=False)
    good = '{"event_id":"e1","event_time":"2025-01-01T00:00:00+01:00","src_account":"a","dst_account":"b","amount":5,"currency":"USD","channel":"p2p","jurisdiction":"US"}'
    recs = [RawRecord(good, {"file": "f", "line": 1}), RawRecord("{oops", {"file": "f", "line": 2}),
            RawRecord(good.replace('"amount":5', '"amount":"12x"'), {"file": "f", "line": 3}),
            RawRecord(good, {"file": "f", "line": 4}),
            RawRecord(good.replace("e1", "e2").replace("USD", "XBT"), {"file": "f", "line": 5}),
            RawRecord(None, {"topic": "t", "partition": 0, "offset": 9}, raw=b"\xff\xfe")]
    got = check(recs, rules, known_ids=set())
    assert got.valid["event_id"].to_list() == ["e1"]
    assert str(got.valid["event_time"][0]) == "2024-12-31 23:00:00+00:00"
    dead = {(d.get("line"), d.get("offset")): d for d in got.dead}
    assert dead[(2, None)]["reasons"] == [UNPARSEABLE] and dead[(2, None)]["record"] == "{oops"
    assert dead[(3, None)]["reasons"] == ["duplicate_event_id", "invalid_amount"]  # e1 came first; rule order
    assert dead[(4, None)]["reasons"] == ["duplicate_event_id"]
    assert dead[(5, None)]["reasons"] == ["unknown_currency"]
    assert dead[(None, 9)]["reasons"] == ["invalid_utf8"] and dead[(None, 9)]["record_base64"] == "//4="
    # an id the stream accepted in an earlier batch is a duplicate too
    again = check([RawRecord(good, {"file": "g", "line": 1})], rules, is_known=lambda ids: set(ids))
    assert again.valid.height == 0 and again.dead[0]["reasons"] == [DUPLICATE]


def test_alert_budget_defers_over_the_cap_in_a_trailing_window():
    hour = 3_600_000_000
    b = AlertBudget("merchant", "1d", 2)
    got = [b.admit("m1", t * hour) for t in (0, 1, 2, 3)] + [b.admit("m2", 3 * hour), b.admit("m1", 25 * hour)]
    assert got[:2] == [None, None] and got[4] is None
    assert got[2] and "merchant=m1 already has 2 alerts in the trailing 1d (cap 2)" in got[2] and got[3]
    assert got[5] is None  # the alerts at 0h left the window; 1h is still in it, so 1 + 1 <= 2
    assert b.admit("m1", 25 * hour + 1) is None  # 1h has just left the window
    assert b.admit("m1", 25 * hour + 2) is not None  # 25h and 25h + 1µs fill it
    assert AlertBudget("merchant", "1d", 2).load(b.state()).admit("m1", 25 * hour + 3) is not None  # state survives
    assert b.admit(None, 0) is None and "(none)" in b.state()


def test_deploy_options_compose_with_their_own_schemas():
    cfg = compose_config(["task=stream", "deploy=file"])
    assert cfg.deploy.state.value == "store" and cfg.deploy.allowed_lateness == "10m" and "input" in cfg.deploy
    cfg = compose_config(["task=stream", "deploy=kafka", "deploy.topics.alerts=my_alerts"])
    assert cfg.deploy.topics.input == "transactions_raw" and cfg.deploy.topics.alerts == "my_alerts"
    assert cfg.deploy.connector.value == "auto"  # Spark's connector where its jars can be had, else ours
    assert compose_config(["task=serve"]).deploy.port == 8000  # deploy=service unchanged
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose_config(["task=stream", "deploy=file", "deploy.alowed_lateness=1h"])


def test_metrics_shadow_and_runtime_options_are_checked_before_any_work():
    from aml_pipeline.errors import ConfigError
    from aml_pipeline.streaming.job import refuse_store_only_options
    from aml_pipeline.streaming.metrics import metrics_options

    def cfg(*overrides):
        return compose_config(["task=stream", "deploy=file", *overrides])

    assert metrics_options(cfg()) is None  # off by default
    opts = metrics_options(cfg("deploy.metrics_port=9108", "deploy.metrics_linger=30s"))
    assert (opts["port"], opts["host"], opts["window"], opts["linger_s"]) == (9108, "127.0.0.1", 5000, 30.0)
    assert opts["levels"].levels["psi"] == (0.1, 0.25) and opts["bins"] == 10  # the monitor group's
    for bad, message in (("deploy.metrics_port=0", "deploy.metrics_port=0 must be a TCP port"),
                         ("deploy.metrics_linger=soon", "deploy.metrics_linger='soon' is not a duration"),
                         ("deploy.metrics_window=0", "deploy.metrics_window=0 must be >= 1"),
                         ("monitor.psi.warn=0.5", r"monitor.psi.warn \(0.5\) must not exceed")):
        with pytest.raises(ConfigError, match=message):
            metrics_options(cfg("deploy.metrics_port=9108", bad))
    refuse_store_only_options(cfg("deploy.state=spark"))  # nothing asked for: nothing refused
    for extra in ("deploy.metrics_port=9108", "deploy.shadow=models:/aml-scorer@challenger", "deploy.model_runtime=onnx"):
        with pytest.raises(UserError, match="not available with deploy.state=spark"):
            refuse_store_only_options(cfg("deploy.state=spark", extra))


def test_scorer_driver_jvm_options_follow_the_user_s():
    from aml_pipeline.spark.session import spark_conf
    from aml_pipeline.streaming.job import stream_engine

    key = "spark.driver.extraJavaOptions"
    default = spark_conf(stream_engine(compose_config(["task=stream", "deploy=kafka"])))[key]
    assert default.startswith("-Dlog4j2.configurationFile=") and default.endswith(" -XX:TieredStopAtLevel=1")
    mine = spark_conf(stream_engine(compose_config(["task=stream", "deploy=file", "+engine.conf.spark.driver.extraJavaOptions=-Xss4m"])))
    assert mine[key].endswith(" -Xss4m -XX:TieredStopAtLevel=1")
    off = spark_conf(stream_engine(compose_config(["task=stream", "deploy=file", "deploy.jvm_options=''"])))[key]
    assert "TieredStopAtLevel" not in off and off.startswith("-Dlog4j2")
    assert spark_conf(compose_config([]).engine)[key] == off  # batch tasks keep the JVM's default compilers


def test_connector_choice_puts_spark_s_jars_in_the_session_conf():
    """auto and spark: Spark's connector with its cached jars as spark.jars (after the user's);
    python: no jars; a connector the user's engine.conf already loads: taken as is."""
    from aml_pipeline.spark.session import spark_conf
    from aml_pipeline.streaming.job import kafka_reader, settle_connector, stream_engine
    from tests.conftest import spark_kafka_jars_or_fail

    jars = spark_kafka_jars_or_fail()
    for wanted in ("auto", "spark"):
        cfg = compose_config(["task=stream", "deploy=kafka", f"deploy.connector={wanted}", "+engine.conf={spark.jars: /my.jar}"])
        choice = settle_connector(cfg)
        assert choice["name"] == "spark" and cfg.deploy.connector.value == "spark" and kafka_reader(cfg) is None
        assert spark_conf(stream_engine(cfg))["spark.jars"] == ",".join(["/my.jar", *jars])
        assert any(j.endswith(f"spark-sql-kafka-0-10_2.13-{choice['version']}.jar") for j in jars)
    cfg = compose_config(["task=stream", "deploy=kafka", "deploy.connector=python"])
    assert settle_connector(cfg)["name"] == "python" and "spark.jars" not in spark_conf(stream_engine(cfg))
    assert kafka_reader(cfg) == "ranges"
    cfg = compose_config(["task=stream", "deploy=kafka", "+engine.conf={spark.jars.packages: org.apache.spark:spark-sql-kafka-0-10_2.13:4.2.0}"])
    assert settle_connector(cfg)["jars"] == [] and cfg.deploy.connector.value == "spark"
    assert settle_connector(compose_config(["task=stream", "deploy=file"])) is None


def test_kafka_reader_auto_follows_the_state_mode_and_ranges_needs_the_store():
    from aml_pipeline.streaming.job import kafka_reader, source_options

    def cfg(*overrides):
        return compose_config(["task=stream", "deploy=kafka", *overrides])

    assert kafka_reader(cfg()) == "ranges" and source_options(cfg())["aml.reader"] == "ranges"
    assert kafka_reader(cfg("deploy.state=spark")) == "driver"
    assert kafka_reader(cfg("deploy.reader=tasks", "deploy.state=spark")) == "tasks"
    assert kafka_reader(cfg("deploy.connector=spark")) is None and "aml.reader" not in source_options(cfg("deploy.connector=spark"))
    with pytest.raises(UserError, match="deploy.reader=ranges .* only deploy.state=store"):
        kafka_reader(cfg("deploy.reader=ranges", "deploy.state=spark"))


def test_stream_refuses_bad_options_in_one_line(run, tmp_path):
    r = run_cli(stream_args(run, "refuse", "deploy.budget.key=shop"), cwd=tmp_path)
    assert r.returncode == 2 and "deploy.budget.key='shop' is not a transaction column" in r.stderr, r.stderr[-2000:]
    r = run_cli(stream_args(run, "refuse", "deploy.state=spark"), cwd=tmp_path)
    assert r.returncode == 2 and "deploy.state=spark" in r.stderr
    r = run_cli(["task=stream", "deploy=service", f"bundle={run.bundle_dir}"], cwd=tmp_path)
    assert r.returncode == 2 and "deploy=file or deploy=kafka" in r.stderr


def _scorer(run, state_dir: Path, out: Path, snapshot_every: int, idle_timeout_s: float = 60.0):
    """The micro-batch scorer as task=stream builds it, on the embedded store (no Spark)."""
    from aml_pipeline.features.windows import duration_us
    from aml_pipeline.store import warm_from_parquet
    from aml_pipeline.timeutil import parse_time
    from aml_pipeline.store.engine import plan_needs
    from aml_pipeline.timeutil import to_us
    from aml_pipeline.store.memory import MemoryStore
    from aml_pipeline.streaming.outputs import FileOutputs
    from aml_pipeline.streaming.scorer import StateLog, StreamScorer

    needs = plan_needs(run.bundle.plan)
    store = MemoryStore(needs.layout())
    saved = StateLog(state_dir).load()
    until = parse_time(run.test_start, "test_start")
    if saved is None or not saved.get("snapshot"):
        warm_from_parquet(store, run.validated, until)
    currencies = list(compose_config([]).validation.currencies)
    scorer = StreamScorer(run.bundle, store, needs, FileOutputs(out), build_rules(currencies, False), state_dir,
                          duration_us(LATENESS), AlertBudget("jurisdiction", "1d", 5), start_watermark_us=to_us(until),
                          write_decisions=True, progress=False, snapshot_every=snapshot_every,
                          idle_timeout_s=idle_timeout_s)
    scorer.restore(rebuild_store=True)
    return scorer


def _batches(run) -> list[list[RawRecord]]:
    return [[RawRecord(t, {"file": f"part-{k:04d}.jsonl", "line": n + 1}) for n, t in enumerate(f)] for k, f in enumerate(run.files)]


@pytest.mark.parametrize("snapshot_every", [0, 2])
def test_restarted_scorer_rebuilds_the_embedded_store_exactly(run, tmp_path, snapshot_every):
    """Stop after a few micro-batches, start a new scorer on the same state: every output and
    count equals an uninterrupted run's (rebuilt from warm-up + row logs, or from a snapshot)."""
    batches = _batches(run)
    whole = _scorer(run, tmp_path / "a/state", tmp_path / "a/out", snapshot_every)
    for i, b in enumerate(batches):
        whole.process(i, b)
    whole.flush()
    first = _scorer(run, tmp_path / "b/state", tmp_path / "b/out", snapshot_every)
    for i, b in enumerate(batches[:5]):
        first.process(i, b)
    assert bool(list((tmp_path / "b/state").glob("snapshot-*"))) is (snapshot_every > 0)
    second = _scorer(run, tmp_path / "b/state", tmp_path / "b/out", snapshot_every)  # a new process, same state
    assert second.batch_id == 4 and second.process(4, batches[4]) == {}  # a replayed, committed batch changes nothing
    for i, b in enumerate(batches[5:], start=5):
        second.process(i, b)
    second.flush()
    assert second.counts == whole.counts
    for kind in ("alerts", "deferred", "dead_letter", "late"):
        assert read_jsonl(tmp_path / f"b/out/{kind}") == [
            {**r, "scored_at": x["scored_at"]} if "scored_at" in r else r
            for r, x in zip(read_jsonl(tmp_path / f"a/out/{kind}"), read_jsonl(tmp_path / f"b/out/{kind}"))], kind
    assert_parity(run, decisions_of(tmp_path / "b/out"))


def test_columnar_history_selects_what_the_store_returns(run):
    """The scorer's frame of the embedded store's rows selects (at least) every row the
    store's own history read returns, and trimming keeps each account's latest instants."""
    import random as rnd

    from aml_pipeline.store import warm_from_parquet
    from aml_pipeline.store.engine import plan_needs
    from aml_pipeline.timeutil import to_us
    from aml_pipeline.store.memory import MemoryStore
    from aml_pipeline.streaming.history import RecentRows

    needs = plan_needs(run.bundle.plan)
    store = MemoryStore(needs.layout())
    end = run.window["event_time"].max()
    warm_from_parquet(store, run.validated, end)
    recent = RecentRows(store.layout, (r for _, _, rows in store.sets() for r in rows))
    accounts = sorted(set(run.window["src_account"].to_list()) | set(run.window["dst_account"].to_list()))
    rng = rnd.Random(3)
    for cut in (to_us(run.window["event_time"].min()), to_us(end)):
        query = rng.sample(accounts, 40)
        got = recent.select(query, cut, cut - needs.expand_us, needs.hubs)
        want = {r[0] for r in store.history_rows(query, cut, cut - needs.expand_us, needs.hubs)}
        assert want and want <= set(got["event_id"].to_list())
        assert got["event_time"].max() < cut and got["event_id"].n_unique() == got.height
    latest = recent.frame.group_by("src_account").agg(pl.col("event_time").max())
    recent.trim(to_us(end) + 30 * 86_400_000_000, force=True)  # a watermark a month later: only latest instants stay
    assert 0 < recent.frame.height < store.stats()["events"]
    kept = recent.frame.group_by("src_account").agg(pl.col("event_time").max())
    assert kept.sort("src_account").equals(latest.sort("src_account"))


def _partitioned(run) -> tuple[list[RawRecord], list[RawRecord]]:
    """The test window as two Kafka partitions keyed by sender (each in event-time order), cut so
    that partition 0 arrives whole in the first batch and partition 1 only up to its first
    third: partition 1's rest is days behind partition 0's newest event."""
    parts: dict[int, list[RawRecord]] = {0: [], 1: []}
    for row in run.window.sort("event_time", "event_id").iter_rows(named=True):
        k = sum(row["src_account"].encode()) % 2
        parts[k].append(RawRecord(_line(row), {"topic": "transactions_raw", "partition": k, "offset": len(parts[k])}))
    cut = len(parts[1]) // 3
    return parts[0] + parts[1][:cut], parts[1][cut:]


def test_watermark_follows_the_slowest_partition(run, tmp_path):
    """One partition read far ahead of the other: its events do not make the other's late
    (the watermark is the slowest partition's), and every event is scored as offline."""
    first, second = _partitioned(run)
    from datetime import datetime

    def when(r: RawRecord) -> datetime:
        return datetime.fromisoformat(json.loads(r.text)["event_time"])

    # a stream-wide watermark would send the lagging partition's events to the late output
    assert max(map(when, first)) - min(map(when, second)) > timedelta(days=2) > timedelta(days=1)  # LATENESS
    scorer = _scorer(run, tmp_path / "state", tmp_path / "out", 0)
    scorer.process(0, first)
    held = scorer.counts["pending"]
    scorer.process(1, second)
    scorer.flush()
    c = scorer.counts
    assert c["late"] == 0 and c["scored"] == run.window.height and c["records_in"] == run.window.height
    assert held > len(first) // 2  # partition 1's first third held partition 0's events back
    assert_parity(run, decisions_of(tmp_path / "out"))
    assert set(scorer.summary()["partition_newest_event_time"]) == {"transactions_raw:0", "transactions_raw:1"}


def test_a_silent_partition_stops_holding_the_watermark(run, tmp_path):
    first, second = _partitioned(run)
    behind = [r for r in first if r.position["partition"] == 1]
    ahead = [r for r in first if r.position["partition"] == 0]
    waiting = _scorer(run, tmp_path / "a/state", tmp_path / "a/out", 0, idle_timeout_s=3600)
    silent = _scorer(run, tmp_path / "b/state", tmp_path / "b/out", 0, idle_timeout_s=0.05)
    for scorer in (waiting, silent):
        scorer.process(0, behind[:5] + ahead[:5])
    time.sleep(0.1)
    for scorer in (waiting, silent):
        scorer.process(1, ahead[5:])
    # partition 1 still holds the watermark at its 5th event for one; the other let partition 0 lead
    assert waiting.counts["scored"] < 10 and silent.counts["scored"] > len(ahead) // 2
    # partition 1 comes back: what it sends behind the watermark now is late, and counted
    silent.process(2, behind[5:])
    assert silent.counts["late"] > 0
    assert silent.counts["records_in"] == silent.counts["scored"] + silent.counts["late"] + silent.counts["pending"]


@pytest.fixture(scope="module")
def shadow_bundle(run) -> Path:
    """A challenger on the run's features (fewer, bolder trees): same plan, other scores."""
    from aml_pipeline.tasks import run_task

    paths = [f"paths.data_dir={run.dir / 'data'}", f"paths.models_dir={run.dir / 'models_shadow'}",
             f"paths.reports_dir={run.dir / 'reports_shadow'}"]
    run_task(compose_config([*SMALL, *paths, "task=train", "model.params.n_estimators=30", "model.params.learning_rate=0.2",
                             "model.params.num_leaves=7"]))
    return run.dir / "models_shadow/bundle"


def _shadowed_scorer(run, name: str, tmp_path: Path, shadow_root: Path | None, shadow_bundle: Path):
    """The first half of the test window through the micro-batch scorer (no Spark), with a
    shadow writing under ``shadow_root``."""
    from aml_pipeline.bundle import ModelBundle
    from aml_pipeline.serving.shadow import Shadow
    from aml_pipeline.streaming.outputs import FileOutputs
    from aml_pipeline.streaming.shadow import StreamShadow

    scorer = _scorer(run, tmp_path / name / "state", tmp_path / name / "out", 0)
    if shadow_root is not None:
        shadow = Shadow(ModelBundle.load(shadow_bundle), run.bundle, str(shadow_bundle))
        scorer.shadow = StreamShadow(shadow, FileOutputs(shadow_root), str(shadow_bundle))
    for i, b in enumerate(_batches(run)[:8]):  # half the window is enough, and half the time
        scorer.process(i, b)
    scorer.flush()
    return scorer


@pytest.mark.slow
def test_a_shadow_never_changes_the_champion_s_outputs(run, shadow_bundle, tmp_path):
    """With a shadow, and with a shadow whose sink fails on every batch, the champion's
    alerts, deferred alerts, dead letters, late events and counts are those of a run without
    one; the working shadow decided every scored event, into its own output only."""
    plain = _shadowed_scorer(run, "plain", tmp_path, None, shadow_bundle)
    (tmp_path / "sink/shadow").mkdir(parents=True)
    shadowed = _shadowed_scorer(run, "shadowed", tmp_path, tmp_path / "sink", shadow_bundle)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/shadow").write_text("a file where the shadow's folder should be")
    broken = _shadowed_scorer(run, "broken", tmp_path, tmp_path / "broken", shadow_bundle)
    for kind in ("alerts", "deferred", "dead_letter", "late"):
        want = [{k: v for k, v in r.items() if k != "scored_at"} for r in read_jsonl(tmp_path / f"plain/out/{kind}")]
        for name in ("shadowed", "broken"):
            got = [{k: v for k, v in r.items() if k != "scored_at"} for r in read_jsonl(tmp_path / f"{name}/out/{kind}")]
            assert got == want, (name, kind)
    assert plain.counts == shadowed.counts == broken.counts and plain.counts["alerts"] > 0
    written = len(list((tmp_path / "sink/shadow").glob("part-*.jsonl")))  # the batches that scored events
    assert shadowed.shadow.failures == 0 and broken.shadow.failures == written > 1
    records = read_jsonl(tmp_path / "sink/shadow")
    decisions = decisions_of(tmp_path / "shadowed/out")
    assert sorted(r["event_id"] for r in records) == sorted(decisions["event_id"].to_list())
    assert len(records) == plain.counts["scored"]
    assert not any(p.name == "shadow" for p in (tmp_path / "shadowed/out").iterdir())


# ----------------------------------------------------------------------------- on Spark
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """One real HTTP scrape of /metrics: sample name -> {sorted label pairs: value}."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def run_scraped(args: list[str], cwd: Path, url: str, summary: Path, timeout: int = 900):
    """Run the scorer (with deploy.metrics_linger) scraping /metrics while it runs and once more
    after its summary is written (the final counts), then end the linger with SIGTERM.
    Returns (exit code, stderr, scrapes during the run, the final scrape)."""
    env = {**cli_env(), "PYTHONPATH": str(ROOT)}
    log = summary.parent.parent / "stderr.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "aml_pipeline", *args], cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    during, final = [], None
    deadline = time.monotonic() + timeout
    try:
        while not summary.exists() and proc.poll() is None and time.monotonic() < deadline:
            try:
                during.append(scrape(url))
            except OSError:  # not listening yet
                pass
            time.sleep(0.2)
        if proc.poll() is None and summary.exists():
            time.sleep(0.5)  # the summary is being written: the counts are final
            final = scrape(url)
            proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, log.read_text(), during, final


@pytest.fixture(scope="module")
def file_run(run, shadow_bundle):
    """One uninterrupted run over files (availableNow, two files per micro-batch), with a shadow
    bundle and the metrics page on (its window holds every scored event), scraped over HTTP."""
    base = run.dir / "files"
    n = write_files(base / "in", run.files)
    port = free_port()
    args = stream_args(run, "files", "deploy.once=true", "deploy.max_files_per_trigger=2", f"deploy.shadow={shadow_bundle}",
                       f"deploy.metrics_port={port}", "deploy.metrics_window=1000000", "deploy.metrics_linger=300s")
    code, stderr, during, final = run_scraped(args, run.dir, f"http://127.0.0.1:{port}/metrics",
                                              base / "reports/stream_summary.json")
    assert code == 0 and final is not None, stderr[-4000:]
    return SimpleNamespace(base=base, out=base / "out", records=n, stderr=stderr, scrapes=during, metrics=final,
                           summary=json.loads((base / "reports/stream_summary.json").read_text()))


@pytest.mark.slow
def test_file_stream_matches_offline_scores_out_of_order(run, file_run):
    decisions = decisions_of(file_run.out)
    expected = set(run.window["event_id"].to_list())
    assert set(decisions["event_id"].to_list()) == expected and decisions.height == len(expected) > 500
    assert_parity(run, decisions)
    # several micro-batches, and events really arrived after later ones
    assert file_run.summary["counts"]["batches"] >= 5
    # and events really arrived after later ones, across micro-batches: with two files per
    # micro-batch (oldest first), some file pair holds an event older than the previous pair's newest
    def times(f: list[str]) -> list[str]:
        return [json.loads(t)["event_time"] for t in f if t.startswith('{"event_id": "synthetic')]

    pairs = [times(run.files[i]) + (times(run.files[i + 1]) if i + 1 < len(run.files) else []) for i in range(0, len(run.files), 2)]
    assert sum(1 for a, b in zip(pairs, pairs[1:]) if min(b) < max(a)) >= 3


@pytest.mark.slow
def test_every_record_is_scored_dead_lettered_or_late(run, file_run):
    c = file_run.summary["counts"]
    dead = read_jsonl(file_run.out / "dead_letter")
    late = read_jsonl(file_run.out / "late")
    scored = decisions_of(file_run.out).height
    assert c["records_in"] == file_run.records == scored + len(dead) + len(late)
    assert (c["scored"], c["dead_lettered"], c["late"], c["pending"]) == (scored, len(dead), len(late), 0)
    assert file_run.summary["reconciles"] is True
    # Spark's phases of every micro-batch: the rows Spark counted are the files read (whole text each)
    spark = file_run.summary["spark_batches"]
    assert sum(b["rows"] for b in spark) == len(run.files) and all(b["addBatch"] >= 0 for b in spark)
    assert file_run.summary["spark_seconds"]["triggerExecution"] >= file_run.summary["spark_seconds"]["addBatch"] > 0
    by_text = {d["record"]: d for d in dead}
    assert set(by_text) == set(run.expected["dead"])
    for text, reasons in run.expected["dead"].items():
        d = by_text[text]
        assert d["reasons"] == reasons, (text, d)
        n = int(d["file"].rsplit("part-", 1)[1][:4])
        assert Path(d["file"]).name.startswith("part-") and run.files[n][d["line"] - 1] == text  # file and line
    assert sorted(x["event_id"] for x in late) == run.expected["late"]
    assert all(x["reasons"] == ["late"] and x["watermark"] and x["record"] for x in late)
    assert "batch 0:" in file_run.stderr and "flush:" in file_run.stderr


@pytest.mark.slow
def test_alert_budget_defers_with_reasons_and_totals_add_up(run, file_run):
    decisions = decisions_of(file_run.out)
    alerts = read_jsonl(file_run.out / "alerts")
    deferred = read_jsonl(file_run.out / "deferred")
    assert deferred, "the budget (cap 5 a day per jurisdiction) should defer some alerts"
    flagged = set(decisions.filter(pl.col("alert"))["event_id"].to_list())
    assert {a["event_id"] for a in alerts} | {a["event_id"] for a in deferred} == flagged
    assert len(alerts) + len(deferred) == len(flagged)
    c = file_run.summary["counts"]
    assert (c["alerts"], c["deferred"]) == (len(alerts), len(deferred))
    assert all("alert budget: jurisdiction=" in a["deferred_reason"] and "(cap 5)" in a["deferred_reason"] for a in deferred)
    # the kept alerts respect the cap in every trailing day, per jurisdiction
    day = 86_400
    from datetime import datetime

    kept: dict[str, list[float]] = {}
    for a in sorted(alerts, key=lambda a: a["event_time"]):
        kept.setdefault(a["jurisdiction"], []).append(datetime.fromisoformat(a["event_time"]).timestamp())
    for times in kept.values():
        for i, t in enumerate(times):
            assert sum(1 for s in times[:i + 1] if s >= t - day) <= 5
    # every alert explains itself and carries its lineage
    from aml_pipeline.streaming.scorer import alert_id

    for a in alerts + deferred:
        assert a["alert_id"] == alert_id(a["event_id"], a["model_name"], a["model_version"], run.bundle.bundle_hash)
        assert len(a["top_features"]) == 5 and {"feature", "value", "contribution"} <= set(a["top_features"][0])
        assert a["score"] >= a["threshold"] and a["jurisdiction"] and a["config_hash"] and a["scored_at"]
        assert a["model_name"] == "aml-scorer" and a["bundle_hash"] == run.bundle.bundle_hash


@pytest.mark.slow
def test_metrics_page_counts_equal_the_reconciled_counts(run, file_run):
    from collections import Counter

    from aml_pipeline.streaming.metrics import COUNTERS

    m, c = file_run.metrics, file_run.summary["counts"]
    assert file_run.summary["reconciles"] is True
    for name in COUNTERS:
        assert m[f"aml_stream_{name}_total"][()] == c[name], name
    assert m["aml_stream_pending_events"][()] == c["pending"] == 0
    alerts = Counter(a["jurisdiction"] for a in read_jsonl(file_run.out / "alerts"))
    assert {dict(k)["jurisdiction"]: v for k, v in m["aml_stream_alerts_by_jurisdiction_total"].items()} == alerts
    assert c["batches"] <= m["aml_stream_batch_duration_seconds_count"][()] <= c["batches"] + 1  # + the final release
    assert m["aml_stream_last_batch_duration_seconds"][()] > 0 and m["aml_stream_event_lag_seconds"][()] > 0
    assert m["aml_stream_bundle_info"][(("bundle_hash", run.bundle.bundle_hash), ("model_name", "aml-scorer"),
                                        ("model_runtime", "native"), ("model_version", "unregistered"))] == 1
    # scraped while the stream ran: counts part way
    mid = [s["aml_stream_records_in_total"][()] for s in file_run.scrapes if "aml_stream_records_in_total" in s]
    assert any(0 < x < c["records_in"] for x in mid), mid


@pytest.mark.slow
def test_metrics_page_drift_is_task_monitor_s_on_the_same_window(run, file_run):
    """The drift gauges over the window (every scored event here) equal what
    aml_pipeline.monitoring computes on the stream's decisions, with the monitor group's settings."""
    from aml_pipeline.monitoring.drift import drift_report, levels_of
    from aml_pipeline.monitoring.window import read_window

    m = file_run.metrics
    mon = compose_config([]).monitor
    window = read_window(file_run.out / "decisions", run.columns)
    assert m["aml_stream_window_events"][()] == window.height == file_run.summary["counts"]["scored"] >= mon.min_events
    report = drift_report(run.bundle.reference, window, levels_of(mon), int(mon.bins), list(mon.exclude))
    psi, js, status = m["aml_stream_drift_psi"], m["aml_stream_drift_js"], m["aml_stream_drift_status"]
    judged = [("score", report["score"]), *report["columns"].items()]
    assert len(judged) == len(psi) > 50
    for name, r in judged:
        key = (("column", name),)
        assert psi[key] == pytest.approx(r["psi"], rel=1e-9, abs=1e-12), name
        assert js[key] == pytest.approx(r["js"], rel=1e-9, abs=1e-12), name
        assert status[key] == {"ok": 0, "warn": 1, "alert": 2}[r["status"]], name
    assert m["aml_stream_drift_detected"][()] == float(report["drift"])
    assert m["aml_stream_drift_level"][(("level", "alert"), ("measure", "psi"))] == mon.psi.alert
    assert m["aml_stream_window_alert_rate"][()] == pytest.approx(window["alert"].mean(), rel=1e-12)


@pytest.mark.slow
def test_stream_shadow_decides_every_scored_event_into_its_own_sink(run, file_run, shadow_bundle):
    from aml_pipeline.bundle import ModelBundle
    from aml_pipeline.monitoring.agreement import agreement
    from aml_pipeline.monitoring.window import read_window

    decisions = decisions_of(file_run.out)
    records = read_jsonl(file_run.out / "shadow")
    assert len(records) == decisions.height == len({r["event_id"] for r in records})
    assert {r["event_id"] for r in records} == set(decisions["event_id"].to_list())
    challenger = ModelBundle.load(shadow_bundle)
    want = {d["event_id"]: d for d in challenger.score_features(decisions, 0, "none").iter_rows(named=True)}
    live = {d["event_id"]: d for d in decisions.iter_rows(named=True)}
    for r in records:
        assert r["shadow_score"] == pytest.approx(want[r["event_id"]]["score"], abs=1e-12)
        assert r["shadow_alert"] == want[r["event_id"]]["alert"] and r["alert"] == live[r["event_id"]]["alert"]
        assert r["shadow_bundle_hash"] == challenger.bundle_hash and r["bundle_hash"] == run.bundle.bundle_hash
    assert sum(r["shadow_score"] != r["score"] for r in records) > len(records) // 2  # another model indeed
    # never alerting: every alert and deferred alert is the champion's
    for kind in ("alerts", "deferred"):
        assert all(a["bundle_hash"] == run.bundle.bundle_hash for a in read_jsonl(file_run.out / kind))
    # the agreement on the metrics page is task=monitor's on the shadow output
    m = file_run.metrics
    counts = {(dict(k)["live"], dict(k)["shadow"]): v for k, v in m["aml_stream_shadow_decisions_total"].items()}
    assert sum(counts.values()) == len(records) and m["aml_stream_shadow_failures_total"][()] == 0
    assert counts[("alert", "alert")] == sum(r["alert"] and r["shadow_alert"] for r in records)
    a = agreement(read_window(file_run.out / "shadow", []))
    assert a["events"] == len(records)
    assert m["aml_stream_shadow_alert_overlap"][()] == pytest.approx(a["alert_overlap"], rel=1e-12)
    assert m["aml_stream_shadow_rank_correlation"][()] == pytest.approx(a["rank_correlation"], rel=1e-9)
    assert file_run.summary["shadow"]["failures"] == 0


def _state_batch(checkpoint: Path) -> int:
    p = checkpoint / "scorer" / "state.json"
    try:
        return json.loads(p.read_text())["batch_id"]
    except (OSError, ValueError):
        return -1


def kill_after_batches(args: list[str], cwd: Path, checkpoint: Path, batches: int = 4) -> int:
    """Start the scorer with ``args``, SIGKILL it and its JVM once ``batches`` micro-batches
    are committed (mid-stream), and return the last committed batch id."""
    env = {**cli_env(), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "aml_pipeline", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while _state_batch(checkpoint) < batches and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the scorer finished before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return _state_batch(checkpoint)


def _kill_and_restart(run, file_run, name: str, *extra: str, rewarm: bool = True) -> None:
    """SIGKILL mid-stream (one file per micro-batch), restart with four files per micro-batch: the
    same alerts as the uninterrupted run, however the rest of the stream is batched."""
    base = run.dir / name
    write_files(base / "in", run.files)
    args = stream_args(run, name, "deploy.once=true", "deploy.max_files_per_trigger=1", *extra)
    killed_at = kill_after_batches(args, run.dir, base / "checkpoint")
    assert 4 <= killed_at < len(run.files) - 1
    if not rewarm:  # restarts from the store's snapshot (embedded) or from Redis itself
        state = json.loads((base / "checkpoint/scorer/state.json").read_text())
        assert ("snapshot" in state) is ("deploy.snapshot_every=3" in extra)
    assert not (base / "reports/stream_summary.json").exists()
    r = run_cli([*args, "deploy.max_files_per_trigger=4"], cwd=run.dir, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    assert f"resuming after batch {killed_at}" in r.stderr
    assert ("+0 events warmed" in r.stderr) is not rewarm  # the embedded store is rebuilt, Redis kept its rows

    def ids(out: Path, kind: str) -> list[str]:
        return [a["alert_id"] for a in read_jsonl(out / kind)]

    for kind in ("alerts", "deferred"):
        got, want = ids(base / "out", kind), ids(file_run.out, kind)
        assert len(got) == len(set(got)) and set(got) == set(want), kind
    summary = json.loads((base / "reports/stream_summary.json").read_text())
    assert summary["counts"] == {**file_run.summary["counts"], "batches": summary["counts"]["batches"]}
    assert_parity(run, decisions_of(base / "out"))


@pytest.mark.slow
def test_killed_scorer_restarts_from_checkpoint_without_losing_alerts(run, file_run):
    """Embedded store: rebuilt on restart from its last snapshot and the row logs after it."""
    _kill_and_restart(run, file_run, "killed", "deploy.snapshot_every=3", rewarm=False)


@pytest.mark.slow
def test_killed_scorer_on_redis_restarts_without_losing_alerts(run, file_run, redis_server):
    """Redis store: keeps its rows across the kill; the restart warms nothing and redoes at most one append."""
    _kill_and_restart(run, file_run, "killed_redis", "deploy.store.backend=redis",
                      f"deploy.store.redis_url={redis_server.url}", f"deploy.store.prefix=kill{os.getpid()}:",
                      rewarm=False)


def test_a_failing_micro_batch_exits_non_zero_even_with_a_stop_pending(run, tmp_path):
    """A micro-batch that fails while SIGTERM is pending is a failure: exit non-zero, and the
    committed state stays that of the last good batch (no release over the half-applied one).

    The failure is made real and timed without touching the scorer: batch 1's dead-letter
    file is written through a FIFO planted at its temporary name. The scorer blocks writing
    (the pipe holds 64 KiB; the dead letters are larger), SIGTERM arrives, then the pipe is
    drained and ``fsync`` on it fails (EINVAL): the batch raises with the stop pending."""
    import fcntl
    import termios

    base = tmp_path / "fail"
    files = [run.files[0], [f"not json {n} " + "x" * 1000 for n in range(120)], run.files[1]]
    write_files(base / "in", files)
    fifo = base / "out/dead_letter/.part-000000000001.jsonl.tmp"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    args = stream_args(run, "fail", "deploy.trigger='1 second'", "deploy.max_files_per_trigger=1")
    args = [a.replace(str(run.dir / "fail"), str(base)) for a in args]
    env = {**cli_env(), "PYTHONPATH": str(ROOT)}
    log = base / "stderr.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "aml_pipeline", *args], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the scorer's open for writing then returns
    try:
        deadline, sizes = time.monotonic() + 300, [-1]
        while proc.poll() is None and time.monotonic() < deadline:  # until the pipe is full: the batch is blocked
            sizes.append(int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder))
            if sizes[-1] >= 4096 and sizes[-1] == sizes[-2] == sizes[-3]:  # full (64 KiB unless pipes are scarce)
                break
            time.sleep(0.3)
        assert proc.poll() is None and sizes[-1] >= 4096, log.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        time.sleep(2)  # the signal is handled while batch 1 is still blocked
        os.set_blocking(fd, True)
        while os.read(fd, 1 << 16):  # drain to the end: the writer goes on to fsync, which fails
            pass
        proc.wait(300)
    finally:
        os.close(fd)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stderr = log.read_text()
    assert proc.returncode != 0, stderr[-3000:]
    assert "the streaming query failed" in stderr and "Invalid argument" in stderr, stderr[-3000:]
    state = json.loads((base / "checkpoint/scorer/state.json").read_text())
    assert (state["batch_id"], state["flushed"], state["tag"]) == (0, False, "000000000000")
    c = state["counts"]
    assert c["records_in"] == len(files[0]) == c["scored"] + c["dead_lettered"] + c["late"] + c["pending"]
    assert not (base / "reports/stream_summary.json").exists()


def _args_under(run, base: Path, *extra: str) -> list[str]:
    """:func:`stream_args` with every path under ``base``."""
    return [a.replace(str(run.dir / "x"), str(base)) for a in stream_args(run, "x", *extra)]


def test_checkpoint_fingerprint_refuses_changed_restarts_and_reset_starts_over(run, tmp_path):
    """The first start records what the stream runs with; the same config resumes, another
    lateness or bundle is refused in one line naming what changed (exit 2 from the command
    line), and deploy.reset=true clears the checkpoint and starts over (refused while the
    earlier run's file outputs would be overwritten)."""
    from aml_pipeline.bundle import ModelBundle
    from aml_pipeline.streaming.job import build_scorer

    base = tmp_path / "fp"
    args = _args_under(run, base)
    scorer, store, _, info = build_scorer(compose_config(args))
    assert info["fresh"] and info["resumed_after_batch"] == -1
    parts = json.loads((base / "checkpoint/fingerprint.json").read_text())["parts"]
    assert parts["allowed_lateness"] == "1d" and parts["bundle_hash"] == run.bundle.bundle_hash
    assert parts["budget"] == "jurisdiction 1d cap 5" and parts["store"].startswith("memory")
    build_scorer(compose_config([*args, "deploy.allowed_lateness=12h"]))  # no micro-batch yet: nothing to protect
    assert json.loads((base / "checkpoint/fingerprint.json").read_text())["parts"]["allowed_lateness"] == "12h"
    scorer, _, _, _ = build_scorer(compose_config(args))
    for i, b in enumerate(_batches(run)[:2]):
        scorer.process(i, b)
    scorer, _, _, info = build_scorer(compose_config([*args, "deploy.allowed_lateness=24h", "deploy.trigger='5 seconds'"]))
    assert info["resumed_after_batch"] == 1 and not info["fresh"]  # same meaning (24h is 1d), other trigger: resumes

    with pytest.raises(UserError) as refused:
        build_scorer(compose_config([*args, "deploy.allowed_lateness=2h", "deploy.budget.cap=7"]))
    msg = str(refused.value)
    assert "\n" not in msg and "deploy.allowed_lateness 1d -> 2h" in msg and "deploy.budget jurisdiction 1d cap 5 -> " in msg
    assert "deploy.reset=true" in msg and "bundle" not in msg

    other = ModelBundle.load(run.bundle_dir)  # the same model and plan, another bundle (a reviewed threshold note)
    other.lineage = {**other.lineage, "note": "thresholds reviewed"}
    other.save(tmp_path / "other_bundle")
    r = run_cli([*args, f"bundle={tmp_path / 'other_bundle'}"], cwd=tmp_path)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert f"bundle (sha256) {run.bundle.bundle_hash[:12]}… -> " in lines[0] and "feature plan" not in lines[0]
    assert json.loads((base / "checkpoint/fingerprint.json").read_text())["parts"] == parts  # unchanged

    reset = [*args, "deploy.allowed_lateness=2h", "deploy.reset=true"]
    with pytest.raises(UserError, match="still holds .* output file"):
        build_scorer(compose_config(reset))
    (base / "out").rename(base / "out.before-reset")
    scorer, _, _, info = build_scorer(compose_config(reset))
    assert info["fresh"] and info["resumed_after_batch"] == -1 and "scorer" in info["reset"]
    assert json.loads((base / "checkpoint/fingerprint.json").read_text())["parts"]["allowed_lateness"] == "2h"
    assert not (base / "checkpoint/scorer/state.json").exists()


def test_fingerprint_on_kafka_names_topic_and_connector_and_masks_passwords(run):
    """On Kafka the fingerprint holds the topic and the connector Spark's offsets belong to;
    a Redis URL's password never reaches the checkpoint."""
    from aml_pipeline.streaming.checkpoint import fingerprint, store_location

    cfg = compose_config(["task=stream", "deploy=kafka", "deploy.connector=python", "deploy.topics.input=payments",
                          "deploy.store.backend=redis", "deploy.store.redis_url=redis://scorer:s3cret@10.0.0.5:6379/2"])
    parts = fingerprint(cfg, run.bundle, "kafka", store_location(cfg.deploy.store, "store"))
    assert parts["source"] == "kafka topic payments" and parts["connector"] == "python"
    assert "s3cret" not in json.dumps(parts) and parts["store"].startswith("redis redis://scorer:") and "10.0.0.5" in parts["store"]
    assert parts["allowed_lateness"] == "10m" and parts["budget"] == "off (cap 0)" and parts["state"] == "store"


def test_redis_store_that_lost_its_data_stops_the_scorer(run, tmp_path):
    """Redis restarted without persistence mid-stream: the next micro-batch stops with one
    line before writing or committing anything, a restart is refused, and deploy.reset=true
    starts over on the emptied store (warmed again)."""
    from aml_pipeline.testing.local_redis import LocalRedis
    from aml_pipeline.streaming.job import build_scorer

    if not LocalRedis.available():
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    redis = LocalRedis(tmp_path / "redis", appendonly=False).start()
    try:
        base = tmp_path / "epoch"
        args = _args_under(run, base, "deploy.store.backend=redis", f"deploy.store.redis_url={redis.url}")
        scorer, store, _, info = build_scorer(compose_config(args))
        epoch = json.loads((base / "checkpoint/fingerprint.json").read_text())["store_epoch"]
        assert info["fresh"] and epoch and store.epoch() == epoch and info["warmed"] > 0
        batches = _batches(run)
        scorer.process(0, batches[0])
        redis.stop()
        redis.start()  # same port, no persistence: every row and the epoch are gone
        with pytest.raises(UserError, match="lost its data mid-stream") as stopped:
            scorer.process(1, batches[1])
        assert "\n" not in str(stopped.value)
        assert json.loads((base / "checkpoint/scorer/state.json").read_text())["batch_id"] == 0
        assert not list((base / "out").glob("*/part-000000000001.*"))  # nothing of batch 1 was written
        with pytest.raises(UserError, match="not the data this checkpoint was scored against"):
            build_scorer(compose_config(args))
        (base / "out").rename(base / "out.before-reset")
        scorer, store, _, info = build_scorer(compose_config([*args, "deploy.reset=true"]))
        assert info["fresh"] and info["warmed"] > 0
        assert json.loads((base / "checkpoint/fingerprint.json").read_text())["store_epoch"] == store.epoch() != epoch
        assert scorer.process(0, batches[0])["records_in"] == len(batches[0])
    finally:
        redis.stop()


def _outputs(out: Path) -> dict[str, list]:
    """A run's file outputs as the consumers see them (every part file), scored_at left out."""
    got = {k: [{x: v for x, v in r.items() if x != "scored_at"} for r in read_jsonl(out / k)]
           for k in ("alerts", "deferred", "dead_letter", "late")}
    got["decisions"] = decisions_of(out).sort("event_id")
    return got


#: The files a micro-batch's protocol writes, in order: outputs by kind, then the scorer's logs and state.
STEP_FILES = {"dead_letter": "out/dead_letter/part-{tag}.jsonl", "late": "out/late/part-{tag}.jsonl",
              "alerts": "out/alerts/part-{tag}.jsonl", "deferred": "out/deferred/part-{tag}.jsonl",
              "decisions": "out/decisions/part-{tag}.parquet", "rows": "checkpoint/scorer/rows-{tag}.parquet",
              "pending": "checkpoint/scorer/pending-{tag}.parquet"}


def _wait_for_step(base: Path, n: int, step: str, proc, rng: random.Random) -> None:
    """Until batch ``n``'s file for ``step`` exists (polled every ms), or its state is committed
    (a batch without records of that kind), or, for ``moment``, a random moment after it is."""
    deadline = time.monotonic() + 120
    path = base / STEP_FILES[step].format(tag=f"{n:012d}") if step in STEP_FILES else None
    while proc.is_alive() and time.monotonic() < deadline and _state_batch(base / "checkpoint") < n:
        if path is not None and path.exists():
            return
        time.sleep(0.001)
    if path is None:
        time.sleep(rng.uniform(0, 1.0))


def _kill_point(base: Path, before: int) -> str:
    """Where a kill left the protocol of the next micro-batch N (committed: the scorer's state;
    ``before``: the committed batch when this start began)."""
    n = _state_batch(base / "checkpoint") + 1
    if n - 1 == before and not list((base / "out").glob(f"*/part-{n:012d}.*")):
        return f"batch {n}: during start-up (restore, warm-up) or before its outputs"
    spark = json.loads((base / "commits.json").read_text())["batch_id"] if (base / "commits.json").is_file() else -1
    if spark < n - 1:
        return f"batch {n - 1}: after state.json, before Spark's commit (store append, snapshot)"
    written = sorted({p.parent.name for p in (base / "out").glob(f"*/part-{n:012d}.*")})
    if written:
        return f"batch {n}: outputs written ({', '.join(written)}), state not"
    return f"batch {n}: before its outputs"


#: Seeds of the fault-injection runs: AML_FAULT_SEED=1,2,3 soaks (each seed, each backend).
FAULT_SEEDS = [int(x) for x in os.environ.get("AML_FAULT_SEED", "20261207").split(",") if x.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("seed", FAULT_SEEDS)
@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_scorer_killed_at_random_points_loses_and_repeats_nothing(run, tmp_path, redis_server, backend, seed):
    """Randomised fault injection: the scorer (as task=stream builds it, under Spark's
    foreachBatch contract: tests/stream_driver.py) is SIGKILLed at random moments, between
    and inside micro-batches (outputs, row and pending logs, state.json, store appends,
    snapshots every 2 batches on the embedded store), and restarted each time. At the end:
    every record is scored, dead-lettered or late; no event is scored twice; alerts,
    deferred alerts, dead letters, late events and decisions equal an uninterrupted run's.
    Seeded: AML_FAULT_SEED=<n> replays a run (a list, e.g. 1,2,3, runs each); the seed is printed."""
    from polars.testing import assert_frame_equal

    from aml_pipeline.streaming.job import build_scorer

    print(f"fault injection: AML_FAULT_SEED={seed} backend={backend}")
    rng = random.Random(f"{seed}-{backend}")
    batches = [[[r.text, r.position] for r in b] for b in _batches(run)]
    store = ["deploy.snapshot_every=2"] if backend == "memory" else [
        "deploy.store.backend=redis", f"deploy.store.redis_url={redis_server.url}"]

    def args(name: str) -> list[str]:
        prefix = [f"deploy.store.prefix=fault{seed}{name}{os.getpid()}:"] if backend == "redis" else []
        return _args_under(run, tmp_path / name, *store, *prefix, "deploy.progress=false")

    whole, wstore, _, _ = build_scorer(compose_config(args("whole")))
    for n, b in enumerate(batches):
        whole.process(n, [RawRecord(t, p) for t, p in b])
    whole.flush()
    wstore.close()

    spec = {"overrides": args("faulty"), "batches": str(tmp_path / "batches.json"),
            "commits": str(tmp_path / "faulty/commits.json"), "summary": str(tmp_path / "faulty/summary.json")}
    (tmp_path / "batches.json").write_text(json.dumps(batches))
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tests.stream_driver"])
    kills: list[str] = []
    # kill points: (micro-batch, step of its protocol) or a random moment after a batch's commit
    points = [(n, rng.choice([*STEP_FILES, "moment"])) for n in sorted(rng.sample(range(1, len(batches) - 3), 5))]
    for attempt in range(12):
        before = _state_batch(tmp_path / "faulty/checkpoint")
        proc = ctx.Process(target=stream_driver.main, args=(str(tmp_path / "spec.json"),))
        proc.start()
        if len(kills) < len(points):
            n, step = points[len(kills)]
            _wait_for_step(tmp_path / "faulty", n, step, proc, rng)
            if proc.is_alive():
                proc.kill()  # SIGKILL
                proc.join(60)
                kills.append(f"{step} of batch {n}: {_kill_point(tmp_path / 'faulty', before)}")
        proc.join(300)
        if proc.exitcode == 0:
            break
        assert proc.exitcode == -signal.SIGKILL, f"the scorer failed (exit code {proc.exitcode}; its error is above)"
    print(f"killed {len(kills)} times: {'; '.join(kills)}; done after {attempt + 1} starts")
    assert len(kills) >= 4 and proc.exitcode == 0

    summary = json.loads((tmp_path / "faulty/summary.json").read_text())
    c, w = summary["counts"], whole.counts
    assert {k: c[k] for k in c if k != "batches"} == {k: w[k] for k in w if k != "batches"}
    assert c["records_in"] == sum(map(len, batches)) == c["scored"] + c["dead_lettered"] + c["late"] and c["pending"] == 0
    got, want = _outputs(tmp_path / "faulty/out"), _outputs(tmp_path / "whole/out")
    ids = got["decisions"]["event_id"]
    assert ids.n_unique() == ids.len() == c["scored"]  # no event scored twice in the committed outputs
    assert len({a["alert_id"] for a in got["alerts"] + got["deferred"]}) == len(got["alerts"]) + len(got["deferred"])
    for kind in ("alerts", "deferred", "dead_letter", "late"):
        assert got[kind] == want[kind], kind
    assert_frame_equal(got["decisions"], want["decisions"])
    assert_parity(run, got["decisions"])


# ----------------------------------------------------------------------------- on Kafka
def _create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(t, num_partitions=n, replication_factor=1) for t, n in topics.items()]).values():
        f.result(30)


def _consume_all(bootstrap: str, topic: str) -> list[dict]:
    """Every record of a topic, from the beginning to its current end, value parsed as JSON."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{topic}", "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=30).topics[topic].partitions
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out, seen = [], {p: 0 for p in parts}
        deadline = time.monotonic() + 60
        while any(seen[p] < ends[p] for p in parts) and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            seen[m.partition()] = m.offset() + 1
            out.append({**json.loads(m.value()), "_key": m.key().decode() if m.key() else None,
                        "_headers": {k: v.decode() for k, v in (m.headers() or [])}})
        assert all(seen[p] >= ends[p] for p in parts), (topic, seen, ends)
        return out
    finally:
        c.close()


def kafka_round_trip(run, kafka_broker, file_args: list[str], tag: str, output_broker: str | None = None):
    """The run's stream records (plus bytes that are not UTF-8) through a real broker: topics
    created (input on 2 partitions), records produced, ``task=stream deploy=kafka`` run with
    ``file_args`` turned to Kafka, every output topic read back (from ``output_broker`` when
    given: ``deploy.output_bootstrap_servers``); the decisions checked for parity and the
    counts for reconciliation. Returns (records, summary, outputs by kind)."""
    from confluent_kafka import Producer

    topics = {k: f"{k}_{tag}" for k in ("input", "alerts", "dead_letter", "deferred", "late", "decisions", "shadow")}
    out_broker = output_broker or kafka_broker
    _create_topics(kafka_broker, {topics["input"]: 2})
    _create_topics(out_broker, {t: 1 for k, t in topics.items() if k != "input"})
    producer = Producer({"bootstrap.servers": kafka_broker})
    records = [t.encode() for f in run.files for t in f] + [b"\xff\xfe not utf-8"]
    for i, value in enumerate(records):
        producer.produce(topics["input"], value=value, partition=i % 2)
    assert producer.flush(30) == 0
    args = [a for a in file_args if not a.startswith(("deploy=", "deploy.input=", "deploy.output="))]
    args += ["deploy=kafka", f"deploy.bootstrap_servers={kafka_broker}", *[f"deploy.topics.{k}={t}" for k, t in topics.items()]]
    if output_broker:
        args.append(f"deploy.output_bootstrap_servers={output_broker}")
    r = run_cli(args, cwd=run.dir, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    reports = next(Path(a.split("=", 1)[1]) for a in args if a.startswith("paths.reports_dir="))
    summary = json.loads((reports / "stream_summary.json").read_text())
    summary["_stderr"] = r.stderr
    got = {k: _consume_all(out_broker, t) for k, t in topics.items() if k != "input"}
    decisions = pl.DataFrame(got["decisions"], infer_schema_length=None).drop("_key", "_headers")
    assert set(decisions["event_id"].to_list()) == set(run.window["event_id"].to_list())
    assert_parity(run, decisions)
    c = summary["counts"]
    assert c["records_in"] == len(records) == decisions.height + len(got["dead_letter"]) + len(got["late"])
    assert (c["scored"], c["dead_lettered"], c["late"], c["pending"]) == (decisions.height, len(got["dead_letter"]), len(got["late"]), 0)
    assert summary["reconciles"] is True and c["batches"] >= 5
    assert sorted(x["event_id"] for x in got["late"]) == run.expected["late"]
    binary = [d for d in got["dead_letter"] if d["record"] is None]
    not_text = check([RawRecord(None, {}, raw=records[-1])], build_rules(["USD"], require_label=False), known_ids=set())
    assert len(binary) == 1 and binary[0]["reasons"] == not_text.dead[0]["reasons"] and binary[0]["topic"] == topics["input"]
    assert binary[0]["partition"] == (len(records) - 1) % 2 and binary[0]["offset"] == (len(records) - 1) // 2
    return records, summary, got
