"""``task=stream``: build the streaming scorer from the config and run it on Spark.

Start-up, in order; any failure before the query starts is one line and exit code 2:

1. the deploy options (state mode, lateness, trigger, budget key);
2. the bundle (verified against its manifest and the registry's hash), and the plan's
   needs from the store: a step that cannot run per event is refused here, by name;
3. the store (Redis must answer); ``deploy.reset``, then the checkpoint's fingerprint
   recorded or compared (a restart with another bundle, plan, lateness, budget, store or
   source is refused; :mod:`.checkpoint`), with Redis's epoch; then the scorer's state next
   to the checkpoint: the embedded store is warmed from ``warm_from`` and rebuilt from the
   state's row logs, the Redis store is warmed only on a fresh checkpoint (it keeps its rows);
4. the Spark query: the source (a directory of JSON-lines files, or a Kafka topic through
   our connector or Spark's), ``foreachBatch`` into :class:`.scorer.StreamScorer`, Spark's
   checkpoint under ``<checkpoint>/spark``, a processing-time trigger or ``availableNow``.

On exit (``once`` done, SIGTERM or SIGINT) the held events are released (the watermark
moves past the newest event) and ``<reports_dir>/stream_summary.json`` is written.

``deploy.state=spark`` (:mod:`.spark_state`) runs its own query with what this module
shares: the option checks, the connector, the source, the session and the query's control
(:func:`micro_batch`, :func:`await_query`, :func:`finish`). It imports them from here, at
its top; this module never imports it, so the two load one way.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from omegaconf import DictConfig, OmegaConf, open_dict

from aml_pipeline.config import option_value
from aml_pipeline.errors import UserError
from aml_pipeline.export.bundle_export import exported_model
from aml_pipeline.gc_policy import freeze_long_lived
from aml_pipeline.kafka import FORMAT, RangeFetcher, register, validate_source_options
from aml_pipeline.progress import table
from aml_pipeline.registry import resolve_bundle
from aml_pipeline.schema import ALL_COLUMNS
from aml_pipeline.serving.scorer import set_threads
from aml_pipeline.spark.session import flatten_conf, get_session
from aml_pipeline.store import open_store, warm_from_parquet
from aml_pipeline.store.engine import plan_needs
from aml_pipeline.store.redis_store import RedisStore
from aml_pipeline.streaming.budget import AlertBudget
from aml_pipeline.streaming.checkpoint import settle as settle_checkpoint
from aml_pipeline.streaming.jars import JarsUnavailable, pyspark_version, spark_kafka_jars
from aml_pipeline.streaming.metrics import linger, metrics_options, start_metrics
from aml_pipeline.streaming.outputs import FileOutputs, KafkaOutputs
from aml_pipeline.streaming.records import RawRecord
from aml_pipeline.streaming.scorer import StateLog, StreamScorer
from aml_pipeline.streaming.shadow import load_stream_shadow
from aml_pipeline.timeutil import config_duration_us, parse_time, to_us
from aml_pipeline.validation.rules import Rule, build_rules, future_skew_us


def kind(cfg: DictConfig) -> str:
    """``file`` or ``kafka``, from the deploy option's keys (each has its own schema)."""
    d = cfg.deploy
    if "bootstrap_servers" in d:
        return "kafka"
    if "input" in d and "output" in d:
        return "file"
    raise UserError("task=stream needs a streaming deploy option: deploy=file or deploy=kafka (deploy=service is task=serve)")


# ----------------------------------------------------------------------------- records from Spark rows
def file_records(table) -> list[RawRecord]:
    """Whole files (``wholetext``, an Arrow table) -> one record per non-blank line, with file and line.

    Lines end at ``\n`` only (``\r\n`` too): ``str.splitlines`` also splits at U+2028,
    U+2029 and ``\x85``, which a JSON string may hold. Spark decodes a file as UTF-8 with
    replacement characters, so a file holding one is read again as bytes here: its lines
    that are not UTF-8 keep their bytes (dead letters as ``invalid_utf8``)."""
    out = []
    for path, text in sorted(zip(table.column("path").to_pylist(), table.column("value").to_pylist())):
        lines: list[str | bytes] = (text or "").removeprefix("\ufeff").split("\n")
        if "\ufffd" in (text or ""):
            lines = _file_lines(path) or lines
        for n, line in enumerate(lines, start=1):
            if isinstance(line, bytes):
                line = line.removesuffix(b"\r")
                try:
                    line = line.decode("utf-8")
                except UnicodeDecodeError:
                    out.append(RawRecord(None, {"file": path, "line": n}, raw=line))
                    continue
            line = line.removesuffix("\r")
            if line.strip():
                out.append(RawRecord(line, {"file": path, "line": n}))
    return out


def _file_lines(path: str) -> list[bytes] | None:
    """The lines of a file (a path or ``file:`` URI) as bytes, or None when it cannot be read."""
    u = urlparse(path)
    local = unquote(u.path) if u.scheme in ("file", "") else None
    try:
        data = Path(local).read_bytes() if local else None
    except OSError:
        return None
    return None if data is None else data.removeprefix(b"\xef\xbb\xbf").split(b"\n")


def kafka_records(table) -> list[RawRecord]:
    """Spark's Kafka schema (an Arrow table) -> records in topic, partition, offset order,
    with their position (the value kept as bytes when it is not UTF-8)."""
    cols = [table.column(c).to_pylist() for c in ("topic", "partition", "offset", "value")]
    out = []
    for topic, partition, offset, value in sorted(zip(*cols), key=lambda r: (r[0], r[1], r[2])):
        value = value or b""
        pos = {"topic": topic, "partition": int(partition), "offset": int(offset)}
        try:
            out.append(RawRecord(value.decode("utf-8"), pos))
        except UnicodeDecodeError:
            out.append(RawRecord(None, pos, raw=value))
    return out


# ----------------------------------------------------------------------------- building
def check_shared_options(cfg: DictConfig):
    """The options both state modes read, checked before any work: (allowed lateness in µs,
    warm_until or None). Raises UserError naming the key."""
    d = cfg.deploy
    lateness = config_duration_us(d.allowed_lateness, "deploy.allowed_lateness", allow_zero=True)
    if int(d.model_threads) < 0:
        raise UserError(f"deploy.model_threads={d.model_threads} must be >= 0 (0 = one per core)")
    if d.budget.key not in ALL_COLUMNS:
        raise UserError(f"deploy.budget.key={d.budget.key!r} is not a transaction column; e.g. merchant, region, jurisdiction")
    if int(d.budget.cap) < 0:
        raise UserError("deploy.budget.cap must be >= 0 (0 = no budget)")
    config_duration_us(d.budget.window, "deploy.budget.window")
    until = parse_time(d.warm_until, "deploy.warm_until") if d.warm_until else None
    if d.warm_from and not Path(d.warm_from).is_file():
        raise UserError(f"deploy.warm_from={d.warm_from}: no such file (validated parquet, e.g. data/validated/transactions.parquet)")
    if not cfg.bundle:
        raise UserError("task=stream needs bundle=<folder | runs:/<id>/bundle | models:/<name>@<alias>>")
    return lateness, until


def stream_outputs(cfg: DictConfig):
    """Where a streaming deployment writes its outputs: files under ``deploy.output``, or
    topics on ``deploy.output_bootstrap_servers`` (default: the input's brokers)."""
    d = cfg.deploy
    if kind(cfg) == "file":
        return FileOutputs(d.output)
    return KafkaOutputs(d.get("output_bootstrap_servers") or d.bootstrap_servers,
                        OmegaConf.to_container(d.topics, resolve=True))


def fx_rules(plan) -> list:
    """With ``features.fx``, a record in a currency the bundle has no rate for is a dead
    letter (``no_fx_rate``), like any other record the stream cannot score, rather than an
    error that stops the stream."""
    if plan.fx is None:
        return []
    return [Rule("no_fx_rate", "in_set", "currency", f"the currency has no rate to {plan.fx.currency} in the bundle's "
                 "features.fx", values=tuple(plan.fx.rates))]


def build_scorer(cfg: DictConfig):
    """(scorer, store, source kind). Raises UserError for anything a user can fix."""
    d = cfg.deploy
    source = kind(cfg)
    if uses_spark_state(cfg):
        raise UserError("deploy.state=spark is built by aml_pipeline.streaming.spark_state (task=stream goes there), not here")
    lateness, until = check_shared_options(cfg)
    skew_us = future_skew_us(cfg.validation.get("max_future_skew", "1h"))
    if source == "kafka":
        source_options(cfg)
    idle_timeout_s = config_duration_us(d.idle_timeout, "deploy.idle_timeout") / 1e6
    bundle = resolve_bundle(cfg.bundle, cfg)
    set_threads(bundle, int(d.model_threads))
    # deploy.model_runtime: scores from an export the manifest verified (explanations stay native)
    bundle.model = exported_model(bundle, str(option_value(d.get("model_runtime", "native"))))
    needs = plan_needs(bundle.plan)
    store = open_store(d.store, needs.layout(), lateness)
    # deploy.reset, then this run's fingerprint recorded or compared (and Redis's epoch): before any state is read
    epoch = store.epoch() if isinstance(store, RedisStore) else None
    checkpoint = settle_checkpoint(cfg, bundle, source, epoch)
    outputs = stream_outputs(cfg)
    currencies = list(OmegaConf.to_container(cfg.validation.currencies, resolve=True))
    rules = build_rules(currencies, require_label=False, max_future_skew_us=skew_us) + fx_rules(bundle.plan)
    state_dir = Path(d.checkpoint) / "scorer"
    saved = StateLog(state_dir).load()
    fresh = saved is None
    scorer = StreamScorer(bundle, store, needs, outputs, rules, state_dir,
                          lateness, AlertBudget(d.budget.key, d.budget.window, int(d.budget.cap)),
                          start_watermark_us=to_us(until) if until else None, explain=str(option_value(d.explain)),
                          top_k=int(d.top_k), write_decisions=bool(d.write_decisions), stream=str(Path(d.checkpoint).resolve()),
                          progress=bool(d.progress), snapshot_every=int(d.snapshot_every),
                          idle_timeout_s=idle_timeout_s)
    scorer.shadow = load_stream_shadow(cfg, bundle, source)  # deploy.shadow (None when not set)
    memory = store.backend == "memory"
    warmed = 0
    # Redis keeps its rows: warm it once, on a new checkpoint. The embedded store is rebuilt:
    # from the warm-up file and the row logs, or from its last snapshot and the logs after it.
    if d.warm_from and (fresh or (memory and not saved.get("snapshot"))):
        warmed = warm_from_parquet(store, d.warm_from, until, bundle.plan.fx)
    scorer.store_epoch = epoch
    last = scorer.restore(rebuild_store=memory)
    scorer.warm_up(currencies[0])
    return scorer, store, source, {"warmed": warmed, "resumed_after_batch": last, "fresh": fresh,
                                   "reset": checkpoint["reset"]}


# ----------------------------------------------------------------------------- the Kafka connector
#: The artifact of Spark's own Kafka connector (deploy.connector=spark).
SPARK_KAFKA = "spark-sql-kafka-0-10_2.13"


def _has_user_jars(cfg: DictConfig) -> bool:
    """Spark's connector already on the session's classpath through ``engine.conf``
    (``spark.jars.packages`` or ``spark.jars`` naming it, as ``spark-submit --packages`` does)."""
    conf = flatten_conf(OmegaConf.to_container(cfg.engine.conf, resolve=True) or {})
    return any("spark-sql-kafka" in str(conf.get(k) or "") for k in ("spark.jars.packages", "spark.jars"))


def choose_connector(cfg: DictConfig) -> dict[str, Any]:
    """Which Kafka connector a ``deploy=kafka`` query runs, decided once before Spark starts.

    ``spark``: Spark's ``format("kafka")`` with the jars of :data:`SPARK_KAFKA`, resolved with
    ``mvn`` (cached under ``.cache/jars/``; :func:`aml_pipeline.streaming.jars.spark_kafka_jars`),
    or the user's own (``engine.conf``); unavailable jars are an error naming the reason.
    ``auto`` (the default): ``spark`` when its jars can be had, else ``python``, our data
    source. Returns ``{"name", "jars", "version", "why"}``; ``why`` is the notice's reason."""
    wanted = str(option_value(cfg.deploy.connector))
    if wanted == "python":
        return {"name": "python", "jars": [], "version": None, "why": "deploy.connector=python"}
    if _has_user_jars(cfg):
        return {"name": "spark", "jars": [], "version": None, "why": f"deploy.connector={wanted}, {SPARK_KAFKA} from engine.conf"}
    try:
        jars, version = spark_kafka_jars()
    except JarsUnavailable as exc:
        if wanted == "spark":
            raise UserError(f"deploy.connector=spark: {SPARK_KAFKA} is not available ({exc}); "
                            "use deploy.connector=python or auto") from None
        return {"name": "python", "jars": [], "version": None,
                "why": f"deploy.connector=auto and {SPARK_KAFKA} is not available: {exc}"}
    mine = pyspark_version()
    note = "" if version == mine else f"; Maven Central has no {mine} (pyspark's), {version} is the nearest release tested with it"
    return {"name": "spark", "jars": [str(j) for j in jars], "version": version,
            "why": f"deploy.connector={wanted}, {SPARK_KAFKA} {version} from {Path(jars[0]).parent}{note}"}


def settle_connector(cfg: DictConfig) -> dict[str, Any] | None:
    """Decide the connector (:func:`choose_connector`), write the choice into
    ``cfg.deploy.connector`` (so every later step sees ``spark`` or ``python``) and its jars
    into ``cfg.engine.conf["spark.jars"]``, and print the one-line notice. None for files."""
    if kind(cfg) != "kafka":
        return None
    choice = choose_connector(cfg)
    with open_dict(cfg):
        cfg.deploy.connector = choice["name"]
        if choice["jars"]:
            conf = dict(OmegaConf.to_container(cfg.engine.conf, resolve=True) or {})
            earlier = str(conf.get("spark.jars") or "").strip(",")
            conf["spark.jars"] = ",".join([*([earlier] if earlier else []), *choice["jars"]])
            cfg.engine.conf = conf
    print(f"kafka connector: {choice['name']} ({choice['why']})", file=sys.stderr, flush=True)
    return choice


def stream_source(spark, cfg: DictConfig, source: str):
    """The query's input DataFrame: the directory's files, or the Kafka topic through the chosen connector."""
    d = cfg.deploy
    if source == "file":
        Path(d.input).mkdir(parents=True, exist_ok=True)
        reader = spark.readStream.format("text").option("wholetext", "true").option("pathGlobFilter", "*.jsonl")
        if d.max_files_per_trigger:
            reader = reader.option("maxFilesPerTrigger", int(d.max_files_per_trigger))
        df = reader.load(str(Path(d.input).resolve()))
        return df.selectExpr("value", "_metadata.file_path AS path")
    connector = str(option_value(d.connector))
    if connector == "python":
        register(spark)
        fmt = FORMAT
    else:
        fmt = "kafka"
    reader = spark.readStream.format(fmt)
    if d.max_records_per_batch:
        reader = reader.option("maxOffsetsPerTrigger", int(d.max_records_per_batch))
    options = source_options(cfg)
    for k, v in options.items():
        reader = reader.option(k, v)
    try:
        df = reader.load()
    except Exception as exc:  # Spark's connector without its jars (a session started before the choice)
        raise UserError(f"deploy.connector={connector}: cannot load the Kafka source ({str(exc).splitlines()[0]}); "
                        "use deploy.connector=python or auto") from None
    if options.get("aml.reader") == "ranges":
        return df.select("topic", "partition", "startOffset", "endOffset")
    return df.select("value", "topic", "partition", "offset")


def kafka_reader(cfg: DictConfig) -> str | None:
    """Who reads the records of a Kafka micro-batch (``deploy.reader``, ``auto`` resolved:
    ``ranges`` for ``state=store``, ``driver`` for ``state=spark``); None with Spark's connector
    (``deploy.connector=auto`` counts as ours until :func:`settle_connector` has decided)."""
    d = cfg.deploy
    if str(option_value(d.connector)) == "spark":
        return None
    state = str(option_value(d.get("state")))
    reader = str(option_value(d.reader))
    if reader == "auto":
        return "driver" if state == "spark" else "ranges"
    if reader == "ranges" and state == "spark":
        raise UserError("deploy.reader=ranges hands the micro-batch offset ranges, which only deploy.state=store "
                        "reads itself; with deploy.state=spark use auto, driver or tasks")
    return reader


def source_options(cfg: DictConfig) -> dict[str, str]:
    """The Kafka source's options (Spark's names, plus ``aml.reader`` for our connector),
    checked; the scorer's :class:`~aml_pipeline.kafka.RangeFetcher` reads with them too."""
    d = cfg.deploy
    options = {"kafka.bootstrap.servers": str(d.bootstrap_servers), "subscribe": str(d.topics.input),
               "startingOffsets": str(d.starting_offsets)}
    options.update({str(k): str(v) for k, v in (OmegaConf.to_container(d.options, resolve=True) or {}).items()})
    reader = kafka_reader(cfg)
    if reader is not None:
        options = {"aml.reader": reader, **options}
        validate_source_options(options)
    return options


def batch_records(cfg: DictConfig, source: str):
    """(records of a micro-batch's DataFrame, close): whole files, Kafka records, or (reader
    ``ranges``) the records of the micro-batch's offset ranges, read here by a
    :class:`~aml_pipeline.kafka.RangeFetcher` open for the whole query."""
    if source == "file":
        return (lambda df: file_records(df.toArrow())), lambda: None
    if kafka_reader(cfg) != "ranges":
        return (lambda df: kafka_records(df.toArrow())), lambda: None
    fetcher = RangeFetcher(source_options(cfg))
    return (lambda df: kafka_records(fetcher.read(df.toArrow()))), fetcher.close


def stream_engine(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.engine`` for a streaming query: ``deploy.jvm_options`` added after any
    ``spark.driver.extraJavaOptions`` of ``engine.conf`` (they apply when the JVM starts).

    Why the default is C1 only: in a store-mode scorer the driver's JVM only moves each
    micro-batch's records (the scoring is Python), yet C2 spent ~17 CPU-s compiling in the
    first minute of the latency benchmark, on a 2-core machine shared with the broker."""
    engine = OmegaConf.to_container(cfg.engine, resolve=True)
    extra = str(cfg.deploy.get("jvm_options") or "").strip()
    if extra:
        conf = flatten_conf(engine.get("conf") or {})
        key = "spark.driver.extraJavaOptions"
        conf[key] = f"{conf.get(key) or ''} {extra}".strip()
        engine["conf"] = conf
    return engine


def stream_session(cfg: DictConfig):
    """The Spark session of a streaming query (:func:`stream_engine`), started after the
    scorer is built; what both built is then moved out of the garbage collector's way."""
    session = get_session(stream_engine(cfg), cfg.paths.data_dir)
    # what start-up built (~330,000 tracked objects in the benchmark's scorer: the bundle, a warmed
    # store, Spark's client) is frozen; a full pass over it took ~170 ms inside one micro-batch
    freeze_long_lived()
    return session


def refuse_store_only_options(cfg: DictConfig) -> None:
    """``deploy.state=spark`` scores inside Spark's state store: the metrics page, the shadow
    bundle and an export runtime are the ``state=store`` scorer's, refused here by name."""
    d = cfg.deploy
    for key, off in (("metrics_port", None), ("shadow", None), ("model_runtime", "native")):
        value = option_value(d.get(key, off))
        if value != off:
            raise UserError(f"deploy.{key}={value} is not available with deploy.state=spark; use deploy.state=store")


def uses_spark_state(cfg: DictConfig) -> bool:
    """``deploy.state=spark``: Spark's own state store, a query of its own (:mod:`.spark_state`)."""
    return str(option_value(cfg.deploy.get("state"))) == "spark"


def run(cfg: DictConfig) -> dict:
    """``task=stream`` with ``deploy.state=store``: the scorer over the online feature store."""
    d = cfg.deploy
    start = time.perf_counter()
    metrics_opts = metrics_options(cfg)  # deploy.metrics_port (None: off), checked before any work
    settle_connector(cfg)
    scorer, store, source, info = build_scorer(cfg)
    metrics = start_metrics(metrics_opts, scorer, str(option_value(d.model_runtime))) if metrics_opts else None
    spark = stream_session(cfg)
    to_records, close_records = batch_records(cfg, source)
    failure: list[BaseException] = []
    busy = threading.Lock()  # a micro-batch and the final release never overlap
    stopped: list[int] = []  # the signals that asked for a stop

    def score_batch(df, batch_id: int) -> None:
        t0 = time.perf_counter()
        records = to_records(df)
        scorer.process(batch_id, records, read_seconds=time.perf_counter() - t0)

    each_batch = micro_batch(score_batch, busy, stopped, failure)

    writer = (stream_source(spark, cfg, source).writeStream.foreachBatch(each_batch)
              .option("checkpointLocation", str(Path(d.checkpoint).resolve() / "spark"))
              .queryName("aml_stream"))
    writer = writer.trigger(availableNow=True) if d.once else writer.trigger(processingTime=str(d.trigger))
    print(f"streaming {scorer.trace['model_name']} version {scorer.trace['model_version']} "
          f"(sha256 {(scorer.trace['bundle_hash'] or '')[:12]}) from {source} [store {store.backend}, "
          f"+{info['warmed']:,} events warmed, resuming after batch {info['resumed_after_batch']}]",
          file=sys.stderr, flush=True)
    extras = [*([f"model runtime {option_value(d.model_runtime)}"] if str(option_value(d.model_runtime)) != "native" else []),
              *([f"shadow version {scorer.shadow.trace['shadow_model_version']}"] if scorer.shadow else []),
              *([f"metrics on {metrics.url}"] if metrics else [])]
    if extras:
        print("stream: " + ", ".join(extras), file=sys.stderr, flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopped.append(signum))
    query = writer.start()
    try:
        await_query(query, stopped, failure, busy)
    finally:
        with busy:  # not under a micro-batch still reading
            close_records()
    with busy:
        scorer.flush()
    summary = finish(cfg, scorer, source, store.backend, stopped, start, query)
    store.close()
    if metrics is not None:
        linger(metrics, metrics_opts["linger_s"], stopped)
        metrics.close()
    return summary


#: Spark's own phases of a micro-batch (StreamingQueryProgress.durationMs), as kept in the summary.
SPARK_PHASES = ("latestOffset", "getBatch", "queryPlanning", "walCommit", "addBatch", "commitOffsets", "triggerExecution")


def trigger_durations(query) -> list[dict[str, Any]]:
    """Spark's timing of the query's recent micro-batches (the last
    ``spark.sql.streaming.numRecentProgressUpdates``, default 100): per batch id, the
    milliseconds of each phase in :data:`SPARK_PHASES`. ``addBatch`` holds the scorer's own
    stages; ``latestOffset`` and ``getBatch`` hold the source's planning and reading, which
    the scorer's ``read`` stage does not see."""
    batches = []
    try:
        progress = query.recentProgress
    except Exception:  # the query's JVM side is gone: nothing to report
        return batches
    for p in progress:
        durations = getattr(p, "durationMs", None) or {}
        batches.append({"batch_id": int(p.batchId), "started": str(p.timestamp), "rows": int(p.numInputRows),
                        **{k: int(durations[k]) for k in SPARK_PHASES if k in durations}})
    return batches


class StopRequested(Exception):
    """Raised by a micro-batch that Spark starts after a stop was asked for: it does no work,
    and Spark, which records a batch only when ``foreachBatch`` returns, hands it to the next run."""


def micro_batch(work, busy: threading.Lock, stopped: list[int], failure: list[BaseException]):
    """The ``foreachBatch`` function around ``work(df, batch_id)``.

    Micro-batches run one at a time under ``busy``. One that starts after a stop signal does
    nothing (:class:`StopRequested`); one already running when the signal comes runs to its
    end (:func:`await_query` waits for it), so a stop never cuts a batch short and any
    exception a batch raises is a real failure, kept for :func:`await_query` to re-raise."""

    def each_batch(df, batch_id: int) -> None:
        with busy:
            if stopped:
                raise StopRequested(f"micro-batch {batch_id} not started: a stop was asked for; the next run reads it")
            try:
                work(df, int(batch_id))
            except BaseException as exc:  # keep the reason; Spark wraps it in a long Java trace
                keep_failure(failure, exc)
                raise

    return each_batch


def keep_failure(failure: list[BaseException], exc: BaseException) -> None:
    """Keep a micro-batch's exception for :func:`await_query` to re-raise, signal or not:
    the batch was not committed, and a run that lost it must not exit 0 (nor release the
    held events over a half-applied batch). Only :class:`StopRequested` is not a failure."""
    if not isinstance(exc, StopRequested):
        failure.append(exc)


def await_query(query, stopped: list[int], failure: list[BaseException], busy: threading.Lock | None = None) -> None:
    """Wait until the query ends or a signal arrives, then stop it; re-raise a micro-batch's
    failure (a UserError as it is, for its one line).

    ``busy``: the lock micro-batches hold (:func:`micro_batch`). On a signal the micro-batch
    in flight is waited for before the query is stopped: it commits, or fails and is reported."""
    try:
        while query.isActive and not stopped:
            query.awaitTermination(0.5)
    except Exception as exc:
        if stopped and not failure and StopRequested.__name__ in str(exc):
            return  # the query ended on a batch Spark started after the signal: a clean stop (finally still runs)
        cause = failure[0] if failure else exc
        if isinstance(cause, UserError):
            raise cause
        raise RuntimeError(f"the streaming query failed: {cause!r}") from cause
    finally:
        if query.isActive:
            if busy is not None:
                with busy:  # the batch in flight ends first; a later one sees the stop and does nothing
                    pass
            query.stop()
    if failure:
        if isinstance(failure[0], UserError):
            raise failure[0]
        raise RuntimeError(f"the streaming query failed: {failure[0]!r}") from failure[0]


def finish(cfg: DictConfig, scorer, source: str, store: str, stopped: list[int], start: float, query=None) -> dict:
    """Write ``<reports_dir>/stream_summary.json``, close the outputs, print the counts.

    ``query``: the streaming query, whose recent micro-batches' Spark phases join the summary
    (``spark_batches``, and their totals in seconds as ``spark_seconds``)."""
    batches = trigger_durations(query) if query is not None else []
    summary = {**scorer.summary(), "source": source, "store": store, "outputs": scorer.outputs.describe(),
               "reader": kafka_reader(cfg) if source == "kafka" else None,
               "connector": str(option_value(cfg.deploy.connector)) if source == "kafka" else None,
               "stopped_by": signal.Signals(stopped[-1]).name if stopped else ("once" if cfg.deploy.once else "end"),
               "seconds": round(time.perf_counter() - start, 3),
               "spark_seconds": {k: round(sum(b.get(k, 0) for b in batches) / 1000, 3) for k in SPARK_PHASES},
               "spark_batches": batches}
    out = Path(cfg.paths.reports_dir) / "stream_summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if getattr(scorer, "shadow", None) is not None:
        scorer.shadow.close()
        summary["shadow"] = scorer.shadow.describe()
    out.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    scorer.outputs.close()
    c = summary["counts"]
    table("stream", [
        ("records in", f"{c['records_in']:,}"),
        ("scored", f"{c['scored']:,}"),
        ("dead-lettered", f"{c['dead_lettered']:,}"),
        ("late", f"{c['late']:,}"),
        ("alerts / deferred", f"{c['alerts']:,} / {c['deferred']:,}"),
        ("reconciles", "yes" if summary["reconciles"] else "NO"),
        ("summary", str(out)),
    ])
    return summary
