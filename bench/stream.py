"""Streaming scorer benchmark: sustained events/s and event-to-alert latency on local[2].

    python bench/stream.py                      # ~1M simulated events, deploy=kafka on a local Apache Kafka
    python bench/stream.py --connector spark,python --triggers "1 second"   # Spark's Kafka connector beside ours
    python bench/stream.py --events 200000      # fewer
    python bench/stream.py --latency-rate 3000 --latency-seconds 60 --triggers "1 second,5 seconds"
    python bench/stream.py --deploy file        # JSON-lines files in and out, no broker
    python bench/stream.py --state both --events 20000 --triggers ""   # state: store and state: spark side by side
    python bench/stream.py --readers auto       # only deploy.reader=auto (default: auto, then driver)
    python bench/stream.py --set deploy.model_threads=1   # any override for the scorer's runs
    python bench/stream.py --output-broker separate  # output topics on a second broker (default: the input's)

What it does (everything under bench/out/stream/, reused when present):

1. data: the simulator's defaults (~1M transactions, 20,000 accounts, 90 days), ``task=data``;
   a bundle: the quickstart experiment trained on its own data (``task=data,features,train``);
2. the stream: the events after the first 7 days (the plan's longest window), capped at
   ``--events``; the store is warmed with the 7 days before (``deploy.warm_from/until``);
3. **throughput**: every stream event is published to ``transactions_raw`` first
   (``task=replay``, ``--partitions`` partitions, default 4), then ``task=stream deploy=kafka deploy.once=true``
   scores the backlog in micro-batches of ``--batch`` records; sustained events/s = records
   in / (end of the last micro-batch - start of the first), from the scorer's summary;
4. **latency**, per trigger interval: a fresh query (trigger ``1 second``, then
   ``5 seconds``) is started on empty topics, then ``task=replay`` publishes
   ``--latency-rate`` events/s for ``--latency-seconds``; latency = the alert's arrival on
   ``aml_alerts`` (the broker's append time: the topic is created with
   ``message.timestamp.type=LogAppendTime`` and read after the run, so no consumer of the
   benchmark's own competes with the scorer for the cores meanwhile) - ``published_at`` of
   the alert's event (read back from ``transactions_raw``), over every alert and over the
   steady state (events published after the first ``STEADY`` seconds, when the query's
   Python workers are up). The query is then stopped (SIGTERM: the held events are
   released and the summary written).

On Kafka, each run has a fresh local Apache Kafka broker (KRaft, from its Maven Central jars:
:class:`aml_pipeline.testing.broker.KafkaBroker`); with ``--output-broker separate`` a second
one holds the output topics (``deploy.output_bootstrap_servers``). Every latency run also
prints what one micro-batch costs (:func:`per_batch`).

On Kafka, every run is done once per ``--connector`` value (``deploy.connector``: ``spark``,
Spark's own spark-sql-kafka-0-10, and ``python``, ours) and, for ours, once per ``--readers``
value (``deploy.reader``: ``auto``, which is ``ranges`` with state store: Spark plans each
micro-batch's offset ranges and the scorer reads their records itself; ``driver``: the records
read by consumers in the driver's source process and handed through Spark; ``tasks``: a Spark
task per partition and micro-batch). A last line compares each with the first (throughput and
steady-state p99 as ratios).

``--state spark`` (or ``both``) runs the same with ``deploy.state=spark`` (Spark's state
store, RocksDB): its bundle is trained with ``features=streaming_local`` (the default plan
without the graph step, which that mode refuses), and ``both`` runs the store mode on that
same bundle, so the two figures compare the state modes and nothing else.

Prints one table and writes bench/out/stream/results.json. Run it on an otherwise idle
machine: it measures wall-clock rates on 2 cores. Each figure comes with the CPU steal
during its run (the share of CPU time a virtual machine's host gave to other guests, from
/proc/stat): figures taken while it is high are not comparable with quiet ones.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package, for the brokers, from a clone that did not pip-install it
#: Input topic partitions (--partitions). The local test broker stopped serving a partition
#: from offset 0 once it held ~230 MB (918k events on 2 partitions); 4 keep 1M events well below.
PARTITIONS = 4
OUT = ROOT / "bench" / "out" / "stream"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
#: Latency runs: events published in the first seconds meet a query still warming up (Python
#: workers start on the first batch with data); the steady-state figures leave them out.
STEADY = 10.0
#: Extra overrides for every task=stream run (--set), e.g. deploy.model_threads=1.
SETTINGS: list[str] = []


class Steal:
    """Share of the machine's CPU time the hypervisor gave to other guests ("steal" in
    /proc/stat) between start and :meth:`percent`: figures taken while it is high measure
    the host's other tenants as much as the scorer."""

    def __init__(self):
        self.start = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return 0, 0
        return sum(fields[:8]), fields[7] if len(fields) > 7 else 0

    def percent(self) -> float | None:
        total, steal = self._read()
        spent = total - self.start[0]
        return round(100 * (steal - self.start[1]) / spent, 1) if spent > 0 else None


#: Who a process is, by its command line (first match wins), for :class:`CpuByRole`.
ROLES = (("broker", "kafka.Kafka"), ("broker", "noida-db"), ("publisher", "task=replay"), ("spark JVM", "java"),
         ("scorer", "task=stream"), ("spark python workers", "pyspark"))


class CpuByRole(threading.Thread):
    """CPU seconds used during a run by the broker, the publisher, Spark's JVM, the scorer
    (the driver's Python process), Spark's Python workers and this benchmark, sampled from
    /proc every second (a process's time is counted from its first sample on). On 2 cores
    they all compete: this shows how much the scorer got."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seen: dict[int, float] = {}
        self.used: dict[str, float] = {}
        self.halt = threading.Event()
        self.tick = os.sysconf("SC_CLK_TCK")
        self._sample()
        self.start()

    def _role(self, pid: int) -> str | None:
        if pid == os.getpid():
            return "benchmark"
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
        return next((role for role, mark in ROLES if mark in cmd), None)

    def _sample(self) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            cpu = (int(fields[11]) + int(fields[12])) / self.tick  # utime + stime
            before = self.seen.get(pid)
            if before is None:  # alive when the run started: count from now on; started during it: all of it
                before = cpu if self.used.get("_started") is None else 0.0
            # classified at every sample: spark-submit's shell script becomes the JVM by exec
            role = self._role(pid)
            if role is not None:
                self.used[role] = self.used.get(role, 0.0) + max(0.0, cpu - before)
            self.seen[pid] = cpu
        self.used["_started"] = 1.0

    def run(self) -> None:
        while not self.halt.wait(1.0):
            self._sample()

    def seconds(self) -> dict[str, float]:
        self.halt.set()
        self.join(5)
        self._sample()
        return {k: round(v, 1) for k, v in sorted(self.used.items()) if not k.startswith("_")}


def cli(*args: str, log: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "aml_pipeline", *args], cwd=ROOT, env=ENV, capture_output=True, text=True)
    if log:
        log.write_text(r.stdout + r.stderr)
    if check and r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{r.stderr[-3000:]}")
    return r


def prepare(n_events: int, local_plan: bool = False) -> dict:
    """The data, the bundle (``local_plan``: ``features=streaming_local``, for deploy.state=spark) and the stream."""
    big, qs = OUT / "big", OUT / ("qs_local" if local_plan else "qs")
    plan = ["features=streaming_local"] if local_plan else []
    if not (big / "data/validated/transactions.parquet").is_file():
        print("generating ~1M simulated transactions ...", flush=True)
        cli("task=data", f"paths.data_dir={big / 'data'}", f"paths.reports_dir={big / 'reports'}")
    if not (qs / "models/bundle/manifest.json").is_file():
        print("training the quickstart bundle ...", flush=True)
        for task in ("data", "features", "train"):
            cli("+experiment=quickstart", *plan, f"task={task}", "mlflow.enabled=false", f"paths.data_dir={qs / 'data'}",
                f"paths.models_dir={qs / 'models'}", f"paths.reports_dir={qs / 'reports'}")
    validated = big / "data/validated/transactions.parquet"
    events = pl.read_parquet(validated).sort("event_time", "event_id")
    warm_until = events["event_time"].min() + timedelta(days=7)
    stream = events.filter(pl.col("event_time") >= warm_until).head(n_events)
    stream_path = OUT / "stream_events.parquet"
    stream.write_parquet(stream_path)
    return {"validated": validated, "bundle": qs / "models/bundle", "warm_until": warm_until.isoformat(),
            "stream": stream_path, "events": stream.height}


def replay(bootstrap: str | None, topic: str, data: dict, rate: float = 0, limit: int | None = None,
           directory: Path | None = None, batch_size: int = 20000) -> float:
    """task=replay to the topic (Kafka) or, with ``directory``, to JSON-lines files there."""
    t0 = time.perf_counter()
    args = ["task=replay", f"input={data['stream']}", f"replay.rate={rate}", f"replay.batch_size={batch_size}"]
    if directory is not None:
        args += ["replay.target=file", f"replay.directory={directory}"]
    else:
        args += [f"replay.bootstrap_servers={bootstrap}", f"replay.topic={topic}", f"replay.partitions={PARTITIONS}"]
    if limit:
        args.append(f"replay.limit={limit}")
    cli(*args, log=OUT / f"replay-{topic}.log")
    return time.perf_counter() - t0


def stream_args(name: str, bootstrap: str | None, topics: dict, data: dict, *extra: str, reader: str = "auto") -> list[str]:
    """deploy=kafka on the topics (``reader``: deploy.reader), or (bootstrap None) deploy=file under runs/<name>/in, out."""
    base = OUT / "runs" / name
    args = ["task=stream", f"bundle={data['bundle']}", "engine.master='local[2]'",
            f"paths.data_dir={base / 'data'}", f"paths.reports_dir={base / 'reports'}",
            f"deploy.checkpoint={base / 'checkpoint'}",
            f"deploy.warm_from={data['validated']}", f"deploy.warm_until='{data['warm_until']}'"]
    if bootstrap is None:
        return [*args, "deploy=file", f"deploy.input={base / 'in'}", f"deploy.output={base / 'out'}", *extra, *SETTINGS]
    return [*args, "deploy=kafka", f"deploy.bootstrap_servers={bootstrap}", f"deploy.output_bootstrap_servers={outputs_at(bootstrap)}",
            *deploy_for(reader),
            *[f"deploy.topics.{k}={v}" for k, v in topics.items()], *extra, *SETTINGS]


#: The label of a run with Spark's own Kafka connector (the others are our connector's readers).
SPARK_CONNECTOR = "spark-connector"


def deploy_for(variant: str) -> list[str]:
    """The connector and reader overrides of a run's variant: Spark's connector, or ours with a reader."""
    if variant == SPARK_CONNECTOR:
        return ["deploy.connector=spark"]
    return ["deploy.connector=python", f"deploy.reader={variant}"]


def describe(variant: str | None) -> str:
    if variant is None:
        return "files"
    return "connector spark" if variant == SPARK_CONNECTOR else f"connector python, reader {variant}"


def topics_for(tag: str) -> dict:
    return {"input": f"tx_{tag}", "alerts": f"alerts_{tag}", "dead_letter": f"dead_{tag}",
            "deferred": f"deferred_{tag}", "late": f"late_{tag}", "decisions": f"decisions_{tag}"}


def run_name(kind: str, state: str, reader: str) -> str:
    """A run's name (logs, topics, folders): e.g. tp, tp-spark, tp-tasks; lat1, lat1-tasks."""
    return kind + "".join(f"-{x}" for x in (state, reader) if x not in ("store", "auto"))


def throughput(bootstrap: str | None, data: dict, batch: int, state: str = "store", reader: str = "auto") -> dict:
    name = run_name("throughput", state, reader)
    topics = topics_for(run_name("tp", state, reader).replace("-", ""))
    if bootstrap is None:
        secs = replay(None, "tp", data, directory=OUT / f"runs/{name}/in", batch_size=batch)
        limit = "deploy.max_files_per_trigger=1"
    else:
        secs = replay(bootstrap, topics["input"], data)
        limit = f"deploy.max_records_per_batch={batch}"
    print(f"published {data['events']:,} events in {secs:.1f}s", flush=True)
    steal, cpu = Steal(), CpuByRole()
    cli(*stream_args(name, bootstrap, topics, data, "deploy.once=true", f"deploy.state={state}", limit,
                     reader=reader), log=OUT / f"{name}.log")
    cpu_seconds = cpu.seconds()
    summary = json.loads((OUT / f"runs/{name}/reports/stream_summary.json").read_text())
    c = summary["counts"]
    span = summary["last_batch_at"] - summary["first_batch_at"]
    return {"state": state, "reader": reader if bootstrap else None, "connector": summary.get("connector"), "records": c["records_in"], "scored": c["scored"], "alerts": c["alerts"], "batches": c["batches"],
            "seconds": round(span, 1), "events_per_s": round(c["records_in"] / span), "busy_seconds": summary["busy_seconds"],
            "reconciles": summary["reconciles"], "run_seconds": summary["seconds"],
            "late": c["late"], "stage_seconds": summary.get("stage_seconds"), "spark_seconds": summary.get("spark_seconds"),
            "cpu_steal_percent": steal.percent(), "cpu_seconds_by_role": cpu_seconds}


def read_topic(bootstrap: str, topic: str) -> Iterator[Any]:
    """Every message of the topic, from offset 0 to the end it had when called."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{topic}", "enable.auto.commit": False})
    parts = c.list_topics(topic, timeout=30).topics[topic].partitions
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in parts}
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    seen = {p: 0 for p in parts}
    while any(seen[p] < ends[p] for p in parts):
        for m in c.consume(10_000, 1.0):
            if m.error():
                continue
            seen[m.partition()] = m.offset() + 1
            yield m
    c.close()


def alert_arrivals(bootstrap: str, topic: str) -> dict[str, float]:
    """When each alert's event id first arrived on the alerts topic: the broker's append time
    (the topic is created with ``message.timestamp.type=LogAppendTime``), read after the run,
    so no consumer polls the broker while the scorer is measured."""
    out: dict[str, float] = {}
    for m in read_topic(bootstrap, topic):
        kind, ms = m.timestamp()
        if kind != 2:  # TIMESTAMP_LOG_APPEND_TIME
            raise SystemExit(f"{topic}: the broker did not stamp the append time (timestamp type {kind})")
        out.setdefault(json.loads(m.value())["event_id"], ms / 1000)
    return out


class FileAlertClock(threading.Thread):
    """Watches the alerts directory; notes when each alert's event id first appears there."""

    def __init__(self, directory: Path):
        super().__init__(daemon=True)
        self.dir = directory
        self.arrived: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        seen: set[str] = set()
        while not self.stop.is_set():
            for p in sorted(self.dir.glob("part-*.jsonl")) if self.dir.is_dir() else []:
                if p.name in seen:
                    continue
                now = time.time()
                seen.add(p.name)
                for line in p.read_text().splitlines():
                    self.arrived.setdefault(json.loads(line)["event_id"], now)
            time.sleep(0.02)


def published_in_files(directory: Path) -> dict[str, float]:
    out = {}
    for p in directory.glob("replay-*.jsonl"):
        for line in p.read_text().splitlines():
            v = json.loads(line)
            out[v["event_id"]] = datetime.fromisoformat(v["published_at"]).timestamp()
    return out


def published_at(bootstrap: str, topic: str) -> dict[str, float]:
    """Each event's ``published_at`` (when ``task=replay`` handed it over), from the input topic."""
    out = {}
    for m in read_topic(bootstrap, topic):
        v = json.loads(m.value())
        out[v["event_id"]] = datetime.fromisoformat(v["published_at"]).timestamp()
    return out


def latency(bootstrap: str | None, data: dict, trigger: str, rate: float, seconds: float, state: str = "store",
            reader: str = "auto") -> dict:
    tag = run_name("lat" + trigger.split()[0], state, reader).replace("-", "")
    topics = topics_for(tag)
    if bootstrap is not None:
        from confluent_kafka.admin import AdminClient, NewTopic

        append_time = {"message.timestamp.type": "LogAppendTime"}
        for k, t in topics.items():
            admin = AdminClient({"bootstrap.servers": bootstrap if k == "input" else outputs_at(bootstrap)})
            f = admin.create_topics([NewTopic(t, num_partitions=PARTITIONS if k == "input" else 1, replication_factor=1,
                                              config=append_time if k == "alerts" else {})])[t]
            f.result(30)
        clock = None
    else:
        clock = FileAlertClock(OUT / "runs" / tag / "out" / "alerts")
        clock.start()
    log = open(OUT / f"latency-{tag}.log", "w")
    steal, cpu = Steal(), CpuByRole()
    proc = subprocess.Popen([sys.executable, "-m", "aml_pipeline",
                             *stream_args(tag, bootstrap, topics, data, f"deploy.trigger='{trigger}'", f"deploy.state={state}",
                                          reader=reader)],
                            cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        time.sleep(5)
        deadline = time.monotonic() + 300
        while "streaming aml-scorer" not in (OUT / f"latency-{tag}.log").read_text() and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit((OUT / f"latency-{tag}.log").read_text()[-3000:])
            time.sleep(0.5)
        time.sleep(10)  # the query's first (empty) micro-batches
        n = int(rate * seconds)
        if bootstrap is None:  # a file every 0.1 s
            secs = replay(None, tag, data, rate=rate, limit=n, directory=OUT / "runs" / tag / "in",
                          batch_size=max(1, int(rate / 10)))
        else:
            secs = replay(bootstrap, topics["input"], data, rate=rate, limit=n)
        time.sleep(15)  # let the last micro-batches finish
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        if clock is not None:
            clock.stop.set()
            clock.join(10)
    cpu_seconds = cpu.seconds()
    pub = published_at(bootstrap, topics["input"]) if bootstrap else published_in_files(OUT / "runs" / tag / "in")
    arrived = alert_arrivals(outputs_at(bootstrap), topics["alerts"]) if bootstrap else clock.arrived
    first = min(pub.values())
    timed = [(pub[e], t - pub[e]) for e, t in arrived.items() if e in pub]
    summary = json.loads((OUT / f"runs/{tag}/reports/stream_summary.json").read_text())

    def pct(values: list[float]) -> dict:
        a = np.array(values)
        if not a.size:
            return {"alerts_timed": 0}
        return {"alerts_timed": int(a.size), **{f"p{q}_s": round(float(np.percentile(a, q)), 3) for q in (50, 95, 99)},
                "max_s": round(float(a.max()), 3)}

    return {"state": state, "reader": reader if bootstrap else None, "connector": summary.get("connector"), "trigger": trigger, "rate": rate, "published": n, "publish_seconds": round(secs, 1),
            # every alert, and the steady state: events published after the first STEADY seconds
            "all": pct([lat for _, lat in timed]), "steady": pct([lat for p, lat in timed if p >= first + STEADY]),
            "counts": summary["counts"], "reconciles": summary["reconciles"], "stage_seconds": summary.get("stage_seconds"),
            "spark_seconds": summary.get("spark_seconds"), "cpu_steal_percent": steal.percent(),
            "cpu_seconds_by_role": cpu_seconds, "per_batch": per_batch(summary)}


def per_batch(summary: dict) -> dict:
    """What one micro-batch costs: the median rows and Spark phases (ms) over Spark's recorded
    micro-batches with rows (the first five left out: start-up), and the records and the
    scorer's stages as means per micro-batch (ms; the summary keeps their totals). Spark's rows
    are the records, or with ``deploy.reader=ranges`` the offset ranges (one per partition)."""
    batches = [b for b in summary.get("spark_batches") or [] if b.get("rows")][5:]
    phases = sorted({k for b in batches for k in b} - {"batch_id", "started"})
    n = max(1, summary["counts"]["batches"])
    return {"spark_batches": len(batches), "records_mean": round(summary["counts"]["records_in"] / n),
            "spark_median_ms": {k: round(float(np.median([b[k] for b in batches if k in b]))) for k in phases} if batches else {},
            "scorer_mean_ms": {k: round(1000 * v / n) for k, v in (summary.get("stage_seconds") or {}).items()}}


#: The broker of the output topics during a run (None: the input's), see :func:`brokers`.
OUTPUT_BROKER: str | None = None


def outputs_at(bootstrap: str) -> str:
    return OUTPUT_BROKER or bootstrap


@contextmanager
def brokers(kafka: bool, separate_outputs: bool) -> Iterator[str | None]:
    """Fresh local Apache Kafka brokers for one run: the input topic's (yielded; None for
    deploy=file) and, with ``separate_outputs``, a second one for the output topics
    (``OUTPUT_BROKER``, ``deploy.output_bootstrap_servers``). Fresh, so that no run reads or
    pays for what an earlier one left. (The outputs went apart by default while the benchmark
    ran noida-db, which re-wrote all it held after any write; Apache Kafka appends.)"""
    global OUTPUT_BROKER
    if not kafka:
        yield None
        return
    from contextlib import nullcontext

    from aml_pipeline.testing.broker import KafkaBroker

    with KafkaBroker() as b, (KafkaBroker() if separate_outputs else nullcontext()) as out:
        OUTPUT_BROKER = out.bootstrap if out is not None else None
        try:
            yield b.bootstrap
        finally:
            OUTPUT_BROKER = None


def main() -> None:
    global PARTITIONS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="stream events for the throughput run")
    ap.add_argument("--batch", type=int, default=20_000, help="records per micro-batch in the throughput run")
    ap.add_argument("--triggers", default="1 second,5 seconds")
    ap.add_argument("--latency-rate", type=float, default=2500.0, help="events/s published in the latency runs")
    ap.add_argument("--latency-seconds", type=float, default=60.0)
    ap.add_argument("--skip-throughput", action="store_true", help="only the latency runs")
    ap.add_argument("--partitions", type=int, default=PARTITIONS, help="input topic partitions (kafka)")
    ap.add_argument("--deploy", choices=["kafka", "file"], default="kafka", help="kafka: the local broker; file: JSON-lines files")
    ap.add_argument("--state", choices=["store", "spark", "both"], default="store",
                    help="deploy.state; spark and both use a bundle of features=streaming_local")
    ap.add_argument("--connector", default="spark,python",
                    help="deploy.connector values to run (kafka), in order: spark (Spark's spark-sql-kafka-0-10), "
                         "python (ours, once per --readers value); the first is compared with the others")
    ap.add_argument("--readers", default="auto",
                    help="deploy.reader values to run with our connector, in order (auto, ranges, driver, tasks)")
    ap.add_argument("--output-broker", choices=["separate", "same"], default="same",
                    help="kafka: the output topics on the input's broker (default) or on a second one")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an override for every task=stream run, e.g. --set deploy.model_threads=1 (repeatable)")
    args = ap.parse_args()
    PARTITIONS = args.partitions
    SETTINGS.extend(args.set)
    OUT.mkdir(parents=True, exist_ok=True)
    import shutil

    shutil.rmtree(OUT / "runs", ignore_errors=True)
    states = ["store", "spark"] if args.state == "both" else [args.state]
    readers = [r.strip() for r in args.readers.split(",") if r.strip()]
    connectors = [c.strip() for c in args.connector.split(",") if c.strip()]
    if set(connectors) - {"spark", "python"}:
        raise SystemExit(f"--connector: spark and/or python, not {args.connector!r}")
    # what each run varies: Spark's connector, or ours with one of the readers
    readers = ([v for c in connectors for v in ([SPARK_CONNECTOR] if c == "spark" else readers)]
               if args.deploy == "kafka" else ["auto"])
    triggers = [s.strip() for s in args.triggers.split(",") if s.strip()]
    data = prepare(args.events, local_plan=args.state != "store")
    results: dict = {"deploy": args.deploy, "output_broker": args.output_broker if args.deploy == "kafka" else None,
                     "states": states, "readers": readers, "settings": SETTINGS, "events": data["events"],
                     "partitions": PARTITIONS, "cpu_count": os.cpu_count(), "load_before": os.getloadavg(),
                     "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "runs": []}
    kafka = args.deploy == "kafka"
    for state in states:
        for reader in readers:
            run = {"state": state, "reader": reader if kafka else None, "latency": [], "throughput": None}
            if not args.skip_throughput:
                with brokers(kafka, args.output_broker == "separate") as bootstrap:
                    run["throughput"] = t = throughput(bootstrap, data, args.batch, state, reader)
                print(f"throughput (state {state}, {describe(run['reader'])}): {t['records']:,} records in {t['seconds']}s = "
                      f"{t['events_per_s']:,} events/s ({t['batches']} micro-batches, reconciles {t['reconciles']}; "
                      f"CPU steal {t['cpu_steal_percent']}%; CPU-s {t['cpu_seconds_by_role']})", flush=True)
            for trigger in triggers:
                with brokers(kafka, args.output_broker == "separate") as bootstrap:
                    r = latency(bootstrap, data, trigger, args.latency_rate, args.latency_seconds, state, reader)
                run["latency"].append(r)
                for k in ("all", "steady"):
                    x = r[k]
                    print(f"latency ({k}, state {state}, {describe(run['reader'])}) at trigger {trigger}, {r['rate']:.0f} events/s: "
                          f"p50 {x.get('p50_s')}s p95 {x.get('p95_s')}s p99 {x.get('p99_s')}s over {x['alerts_timed']} alerts "
                          f"(CPU steal {r['cpu_steal_percent']}%; CPU-s {r['cpu_seconds_by_role']})", flush=True)
                b = r["per_batch"]
                print(f"per micro-batch (trigger {trigger}): {b['records_mean']:,} records (mean); Spark, median of "
                      f"{b['spark_batches']}: {b['spark_median_ms']}; scorer stages, mean: {b['scorer_mean_ms']} (ms)", flush=True)
            results["runs"].append(run)
    results["load_after"] = os.getloadavg()
    print_comparison(results["runs"])
    (OUT / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(json.dumps(results, indent=1, default=str))


def print_comparison(runs: list[dict]) -> None:
    """One line per state mode: each reader's figures beside the first reader's, as ratios."""
    for state in dict.fromkeys(r["state"] for r in runs):
        mine = [r for r in runs if r["state"] == state]
        base = mine[0]
        for other in mine[1:]:
            parts = []
            if base["throughput"] and other["throughput"]:
                a, b = base["throughput"]["events_per_s"], other["throughput"]["events_per_s"]
                parts.append(f"throughput {a:,} vs {b:,} events/s (ratio {a / b:.2f})")
            for la, lb in zip(base["latency"], other["latency"]):
                pa, pb = la["steady"].get("p99_s"), lb["steady"].get("p99_s")
                if pa and pb:
                    parts.append(f"steady p99 at {la['trigger']}: {pa}s vs {pb}s (ratio {pb / pa:.2f})")
            if parts:
                print(f"state {state}, {describe(base['reader'])} vs {describe(other['reader'])}: " + "; ".join(parts), flush=True)


if __name__ == "__main__":
    main()
