"""Typed config schemas, registered in Hydra's ConfigStore.

Every group option in ``conf/`` extends one of these schemas (``defaults: [base_<name>]``),
so a misspelt key or a value of the wrong type fails at composition, before any work,
with the full key named (``full_key: source.pth``). Enum fields list their allowed values
in the error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


def option_value(v: Any) -> Any:
    """A config value as itself, an enum member of the typed config (below) as its value."""
    return getattr(v, "value", v)


class Task(str, Enum):
    data = "data"  # read, validate, quarantine
    features = "features"  # split by time, fit the feature plan on train, write feature tables
    train = "train"  # fit the classifier, choose thresholds on validation, write the bundle
    evaluate = "evaluate"  # judge the bundle on the test window, write reports, register in MLflow
    score = "score"  # score a file with a bundle
    all = "all"  # data -> features -> train -> evaluate
    sweep_summary = "sweep_summary"  # rank the jobs of a multirun by PR-AUC
    serve = "serve"  # online scoring service (FastAPI) over the online feature store
    stream = "stream"  # streaming scorer (Spark Structured Streaming) over the online feature store
    replay = "replay"  # publish validated transactions to Kafka or JSON-lines files, in event-time order
    monitor = "monitor"  # drift of a scored window against the bundle's reference; performance over mature labels
    promote = "promote"  # gate the challenger against the champion on a later labelled window, then move the alias
    export = "export"  # write the bundle's LightGBM model as ONNX, lleaves or treelite, parity-checked
    cases = "cases"  # alerts (a score file, the stream's alert folder) into the case database, grouped per account
    labels = "labels"  # the case database's dispositions as a labels file (event_id, account, label, labelled_at, source)
    workbench = "workbench"  # the investigators' web pages over the case database (queue, evidence, dispositions)
    users = "users"  # the workbench's users: add, new password, deactivate, activate, list


class FileFormat(str, Enum):
    csv = "csv"
    parquet = "parquet"


class AccountLabelRule(str, Enum):
    """How AMLSim's per-account fraud flags become per-transaction labels."""

    both = "both"  # sender and receiver are both fraud accounts
    either = "either"  # at least one end is a fraud account
    source = "source"  # the sender is a fraud account
    target = "target"  # the receiver is a fraud account


@dataclass
class PathsConfig:
    data_dir: str = "data"
    reports_dir: str = "reports"
    #: Where train writes the model bundle (a folder).
    models_dir: str = "models"


@dataclass
class ValidationConfig:
    #: ISO 4217 codes accepted in ``currency`` (BTC for Bitcoin); others are quarantined.
    currencies: list[str] = MISSING
    #: Require a 0/1 label on every row when the source has labels (training data).
    require_label: bool = True
    #: How far past the trusted clock (the wall clock when the records are read, in batch,
    #: streams and the API alike) an event time may be; later ones are quarantined, dead-
    #: lettered or answered 422 as event_time_in_future (docs/reliability.md says why).
    max_future_skew: str = "1h"


# ----------------------------------------------------------------------------- sources
@dataclass
class SourceConfig:
    _target_: str = MISSING
    #: Jurisdiction of transactions whose sender's country is unknown (ISO 3166 alpha-2).
    jurisdiction: str = "US"
    #: A labels file (csv or parquet: event_id, label, labelled_at; ``task=labels`` writes
    #: one from the workbench's dispositions) whose labels replace the source's own, or add
    #: one where it has none. Applied after validation, before anything else reads the data.
    labels: Optional[str] = None
    #: Only labels given at or before this instant count (ISO 8601; null = now): a label
    #: given later was not known when the model is trained (docs/cases.md). The task reads
    #: both keys; the adapter never sees them (aml_pipeline.build.TASK_KEYS).
    labels_as_of: Optional[str] = None


@dataclass
class ShiftConfig:
    """A change of behaviour in the simulated world (what ``task=monitor`` should notice).

    Applied after the whole world is simulated, with its own random stream, so the
    defaults (no shift) give the same bytes as before and a shifted world keeps the same
    accounts and the same events, only changed. The typology mix is ``source.typology_mix``.
    """

    #: Multiply every amount by this (1.0 = no change), e.g. 3.0 for a currency or price shift.
    amount_scale: float = 1.0
    #: Channel -> channel: ``channel_share`` of the key channel's events move to the value
    #: channel (channels: card, salary, ach, p2p, wire, cash_deposit).
    channels: Any = None
    channel_share: float = 0.5
    #: The shift applies to events from this day of the window on (0 = all of them).
    from_day: int = 0


@dataclass
class SyntheticSourceConfig(SourceConfig):
    _target_: str = "aml_pipeline.sources.synthetic.SyntheticSource"
    n_accounts: int = 20_000
    days: int = 90
    start: str = "2025-01-01T00:00:00Z"
    #: Target fraction of transactions that belong to laundering instances.
    laundering_rate: float = 0.004
    #: Relative weight of each typology among laundering instances.
    typology_mix: dict[str, float] = field(default_factory=lambda: {
        "fan_in": 1.0, "fan_out": 1.0, "cycle": 1.0, "scatter_gather": 1.0, "gather_scatter": 1.0,
        "bipartite": 1.0, "stack": 1.0, "random": 1.0, "structuring": 1.0, "pass_through": 1.0,
    })
    #: Cash/transfer reporting threshold that structuring stays just below (source currency).
    reporting_threshold: float = 10_000.0
    seed: int = 42
    #: Which world to simulate: simple (learnable: laundering avoids the card and salary
    #: channels, few legitimate look-alikes) or realistic (every typology has legitimate
    #: look-alikes, laundering uses the same channels, hours and amounts as normal
    #: transfers; docs/data.md, "The realistic world").
    realism: str = "simple"
    #: A change of behaviour from a given day on (the defaults change nothing).
    shift: ShiftConfig = field(default_factory=ShiftConfig)


@dataclass
class PaySimSourceConfig(SourceConfig):
    _target_: str = "aml_pipeline.sources.paysim.PaySimSource"
    path: str = MISSING
    #: Event time of step 1 (PaySim steps are hours of simulated time).
    start: str = "2025-01-01T00:00:00Z"
    currency: str = "USD"
    separator: str = ","


@dataclass
class AmlSimSourceConfig(SourceConfig):
    _target_: str = "aml_pipeline.sources.amlsim.AmlSimSource"
    #: Folder holding an AMLSim output: nodes.csv + transactions.csv (early format) or
    #: transactions.csv + alert_transactions.csv / alert_accounts.csv (newer format).
    path: str = MISSING
    #: early | v2 | auto (decided by the columns of transactions.csv).
    format: str = "auto"
    #: Early format only: which ends of a transaction must be fraud accounts for label 1.
    label_rule: AccountLabelRule = AccountLabelRule.both
    #: Early format only: a fraud *sender* counts only from its fraudStep on (the step of
    #: its first laundering transfer; -1 marks fraud accounts that never forward money, which
    #: still count as receivers). Receivers count at any time.
    respect_fraud_step: bool = True
    #: Early format only: typology to record on positives (the early format does not say).
    typology: Optional[str] = None
    #: Early format only: time of step 0 and the length of one step.
    start: str = "2025-01-01T00:00:00Z"
    step: str = "1d"
    currency: str = "USD"


@dataclass
class AmlWorldSourceConfig(SourceConfig):
    _target_: str = "aml_pipeline.sources.amlworld.AmlWorldSource"
    #: A ``*_Trans.csv`` file.
    path: str = MISSING
    #: The matching ``*_Patterns.txt`` (optional): gives typology and attempt id of positives.
    patterns: Optional[str] = None
    #: Timezone the naive timestamps are in.
    timezone: str = "UTC"


@dataclass
class TabularSourceConfig(SourceConfig):
    """Any CSV or parquet export, described by config alone."""

    _target_: str = "aml_pipeline.sources.tabular.TabularSource"
    path: str = MISSING
    format: FileFormat = FileFormat.csv
    separator: str = ","
    #: canonical column -> column in the file (event_time, src_account, dst_account and
    #: amount are required; others optional, see docs/data.md).
    columns: Any = None
    #: canonical column -> constant, for columns the file lacks (e.g. currency: EUR).
    constants: Any = None
    #: strptime format of the time column; null = ISO 8601.
    time_format: Optional[str] = None
    #: Timezone of naive times in the file.
    timezone: str = "UTC"
    #: Multiply amounts by this (0.01 when the file holds cents).
    amount_scale: float = 1.0
    #: Values of the label column that mean laundering, all others meaning 0; empty = the
    #: usual 1/true/yes and 0/false/no, anything else being quarantined as invalid_label.
    positive_labels: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- features
@dataclass
class FeaturesConfig:
    #: Ordered feature steps: step name -> {_target_: aml_pipeline.features..., params}.
    #: Each step's parameters are checked against its class when the plan is built.
    steps: dict[str, Any] = MISSING
    #: One reporting currency: ``{currency: USD, rates: {EUR: 1.08, GBP: 1.27}}`` (units of
    #: the reporting currency per one unit of the listed one). Every amount is converted by
    #: its event's currency before any step sees it; a currency with no rate is an error.
    #: null: amounts are used as given (aml_pipeline/features/fx.py).
    fx: Any = None


# ----------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    _target_: str = MISSING
    #: Stop adding trees when validation average precision has not improved for this many
    #: rounds (classifiers that support it); 0 turns early stopping off.
    early_stopping_rounds: int = 50
    #: Classifier-specific hyper-parameters passed through to the library.
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 42


@dataclass
class WeightingConfig:
    _target_: str = MISSING
    #: fixed_positive only: weight of a positive example (negatives weigh 1).
    positive_weight: float = 1.0


# ----------------------------------------------------------------------------- split
@dataclass
class SplitConfig:
    """Train / validation / test windows by event time (never shuffled)."""

    #: fraction: windows are fractions of the time range; dates: explicit cut dates.
    method: str = "fraction"
    train: float = 0.6
    valid: float = 0.2
    #: method=dates: the first instant of the validation and test windows (ISO 8601, UTC).
    valid_start: Optional[str] = None
    test_start: Optional[str] = None


# ----------------------------------------------------------------------------- thresholds
class ThresholdTarget(str, Enum):
    precision = "precision"  # the lowest threshold whose validation precision >= value
    recall = "recall"  # the highest threshold whose validation recall >= value
    fixed = "fixed"  # the threshold is value itself


@dataclass
class ThresholdRule:
    target: ThresholdTarget = ThresholdTarget.precision
    value: float = 0.5


@dataclass
class ThresholdsConfig:
    #: Rule for jurisdictions not listed below.
    default: ThresholdRule = field(default_factory=ThresholdRule)
    #: ISO country code -> rule.
    jurisdictions: dict[str, ThresholdRule] = field(default_factory=dict)
    #: A jurisdiction with fewer validation positives than this uses the pooled
    #: validation scores of all jurisdictions to pick its threshold (and says so).
    min_positives: int = 5
    #: Precision targets at which every report states the recall.
    report_precisions: list[float] = field(default_factory=lambda: [0.5, 0.8, 0.9])


# ----------------------------------------------------------------------------- evaluation
class LearnedBaseline(str, Enum):
    """Learned baselines every evaluation report compares the configured plan with."""

    raw = "raw"  # LightGBM on the raw canonical columns (amount, time of day, categorical codes)
    raw_windows = "raw_windows"  # raw + per-account 24h / 7d in/out counts and sums (strictly earlier events)


@dataclass
class EvaluationConfig:
    """``task=evaluate``: what the test-window report compares the model with (docs/evaluation.md)."""

    #: Learned baselines trained on the same split (an empty list skips them for fast runs).
    baselines: list[LearnedBaseline] = field(default_factory=lambda: [LearnedBaseline.raw, LearnedBaseline.raw_windows])
    #: Instance- and account-level figures are also given at the test threshold reaching
    #: this precision (a bench figure, chosen on test; the operating point is the bundle's).
    instance_precision: float = 0.5


# ----------------------------------------------------------------------------- tracking
@dataclass
class MlflowConfig:
    #: Any MLflow tracking URI; the default is a local store in the project directory.
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_location: str = "mlruns/artifacts"
    experiment_name: str = "aml_pipeline"
    registered_model: str = "aml-scorer"
    #: Alias the new version gets (deploy by models:/<name>@<alias>).
    alias: str = "challenger"
    enabled: bool = True


# ----------------------------------------------------------------------------- scoring
class Explain(str, Enum):
    alerts = "alerts"  # per-row contributions for alerted events only (SHAP is costly)
    all = "all"  # for every scored event
    none = "none"


@dataclass
class ScoringConfig:
    #: Which events get their top contributing features computed.
    explain: Explain = Explain.alerts
    #: How many contributing features each explained decision lists.
    top_k: int = 5


# ----------------------------------------------------------------------------- deploy
class StoreBackend(str, Enum):
    memory = "memory"  # embedded in the service process (state lives as long as the process)
    redis = "redis"  # a Redis server (state survives service restarts; shared with other scorers)


class OnlineEngine(str, Enum):
    online = "online"  # per-event engine over the store's histories (same values as polars)
    polars = "polars"  # FeaturePlan.transform(event, history) per request (the offline code; slow)


class ModelRuntime(str, Enum):
    native = "native"  # the bundle's own model (LightGBM Booster)
    onnx = "onnx"  # the bundle's ONNX export on ONNX Runtime (task=export export.format=onnx)
    lleaves = "lleaves"  # the bundle's LLVM-compiled export (task=export export.format=lleaves)
    treelite = "treelite"  # the bundle's treelite export, run by treelite's predictor (task=export export.format=treelite)


@dataclass
class StoreConfig:
    """The online feature store: each account's recent events, shared by online scorers."""

    backend: StoreBackend = StoreBackend.memory
    #: Redis backend: server URL, and the prefix of every key the store writes.
    redis_url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "aml:"
    #: How long a scored event id is remembered for idempotent replays (a duration).
    dedup_ttl: str = "30d"
    #: Accounts idle this long, and event ids this old (event time, behind the newest event
    #: seen), are forgotten, so the store stays bounded; must exceed the longest feature
    #: window plus the allowed lateness. null = never (the store grows with the accounts).
    retention: Optional[str] = "60d"


class FsyncPolicy(str, Enum):
    always = "always"  # fsync after every decision line, before the answer goes out
    interval = "interval"  # fsync at most fsync_interval after a line (background thread)
    never = "never"  # flush each line to the OS; the OS decides when it reaches the disk


@dataclass
class DecisionLogPolicy:
    """How durable and how large the decision log is (docs/serving.md, "The decision log")."""

    fsync: FsyncPolicy = FsyncPolicy.never
    fsync_interval: str = "1s"
    #: Rotate (decisions.jsonl -> decisions.jsonl.1 ...) before the file passes this many
    #: bytes (0 = never) or when it is older than max_age (null = never); keep that many old files.
    max_bytes: int = 0
    max_age: Optional[str] = None
    keep: int = 10


@dataclass
class DeployConfig:
    """``task=serve``: the online scoring service (``conf/deploy/service.yaml``)."""

    host: str = "127.0.0.1"
    port: int = 8000
    #: API key required in the X-API-Key header; null = take it from env AML_API_KEY.
    api_key: Optional[str] = None
    #: Requests with a larger body are refused with 413.
    max_body_bytes: int = 262_144
    #: Most transactions one POST /score/batch may carry.
    max_batch: int = 500
    #: online: per-event engine (~0.3 ms); polars: FeaturePlan.transform per request (~45 ms).
    feature_engine: OnlineEngine = OnlineEngine.online
    #: Which decisions get their top contributing features (per-row SHAP costs ~3 ms).
    explain: Explain = Explain.alerts
    top_k: int = 5
    #: JSON lines, one per decision (features, score, threshold, model version).
    decision_log: str = "${paths.data_dir}/decisions/decisions.jsonl"
    decision_log_policy: DecisionLogPolicy = field(default_factory=DecisionLogPolicy)
    #: Warm the store before serving: validated parquet, events strictly before warm_until.
    warm_from: Optional[str] = None
    warm_until: Optional[str] = None
    #: Before serving, run the feature steps once for this many of the store's busiest
    #: accounts, so their first requests find the carried folds built (0: none).
    prime_accounts: int = 10_000
    #: Warm the store and exit without serving (Redis backend: warm once, serve many times).
    warm_only: bool = False
    #: Re-score logged decisions and exit: an event id, "alerts" or "all".
    replay: Optional[str] = None
    log_level: str = "warning"
    #: Service processes on the port (SO_REUSEPORT), sharing the store: > 1 needs the
    #: redis backend (an embedded store per process would give wrong features).
    workers: int = 1
    store: StoreConfig = field(default_factory=StoreConfig)
    #: A second bundle (uri) scored on every decision and logged beside the live one as
    #: shadow_score / shadow_alert; it never alerts. Needs the live bundle's feature plan.
    shadow: Optional[str] = None
    #: What computes the model's score: native (the bundle's LightGBM) or an export made
    #: by task=export (onnx | lleaves | treelite), loaded only if its hash matches the manifest.
    model_runtime: ModelRuntime = ModelRuntime.native


# ----------------------------------------------------------------------------- deploy: streaming
class StreamStateMode(str, Enum):
    store = "store"  # per micro-batch: the plan's polars code against the online feature store
    spark = "spark"  # Spark's own state store (transformWithStateInPandas); not implemented yet


class KafkaConnector(str, Enum):
    auto = "auto"  # spark where its jars are cached or mvn can fetch them, else python (a notice says which, and why)
    spark = "spark"  # Spark's format("kafka"): spark-sql-kafka-0-10 jars from Maven Central (mvn), passed as spark.jars
    python = "python"  # aml_pipeline's Python data source on confluent-kafka (no jars needed)


class KafkaReader(str, Enum):
    auto = "auto"  # ranges with state=store, driver with state=spark
    ranges = "ranges"  # Spark plans each micro-batch's offset ranges; the scorer reads their records itself (state=store)
    driver = "driver"  # consumers kept open in the driver's source process read every micro-batch
    tasks = "tasks"  # a Spark task per Kafka partition and micro-batch (reads scale out with executors)


@dataclass
class AlertBudgetConfig:
    """At most ``cap`` alerts per value of ``key`` in any trailing event-time ``window``;
    the rest go to the deferred output with the reason (never dropped). cap 0 = no budget."""

    key: str = "jurisdiction"
    window: str = "1d"
    cap: int = 0


@dataclass
class StreamDeployConfig:
    """``task=stream``: keys shared by every streaming deployment (``conf/deploy/file.yaml``,
    ``conf/deploy/kafka.yaml``); see docs/streaming.md."""

    state: StreamStateMode = StreamStateMode.store
    store: StoreConfig = field(default_factory=StoreConfig)
    #: Processing-time trigger interval ("1 second", "500 milliseconds").
    trigger: str = "1 second"
    #: Spark's availableNow trigger: process what is waiting, flush held events, exit.
    once: bool = False
    #: Spark's checkpoint (source offsets) and the scorer's own state next to it.
    checkpoint: str = "${paths.data_dir}/stream/checkpoint"
    #: Start the stream over: clear the checkpoint (Spark's offsets, the scorer's state and
    #: the fingerprint of what it was started with) before starting. A restart whose bundle,
    #: plan, lateness, budget, store or source differs from the checkpoint's is refused
    #: without it. Pass it once on the command line, never keep it in a config file.
    reset: bool = False
    #: Events earlier than (latest event time seen - allowed_lateness) go to the late output.
    allowed_lateness: str = "10m"
    #: A source partition that delivered nothing for this long (processing time) stops
    #: holding the watermark back (the watermark follows the slowest live partition).
    idle_timeout: str = "1m"
    budget: AlertBudgetConfig = field(default_factory=AlertBudgetConfig)
    #: Warm the store before streaming: validated parquet, events strictly before warm_until.
    warm_from: Optional[str] = None
    warm_until: Optional[str] = None
    explain: Explain = Explain.alerts
    top_k: int = 5
    #: Threads for the model's scores and explanations while a micro-batch is scored on the
    #: driver (Spark's tasks are done by then): 0 = one per core.
    model_threads: int = 0
    #: Also write every decision with all its feature values (the "decisions" output).
    write_decisions: bool = False
    #: Print one summary line per micro-batch.
    progress: bool = True
    #: Embedded store: every N micro-batches its rows replace the warm-up file and the row
    #: logs as the base of a restart (0 = never; a restart then re-reads them all).
    snapshot_every: int = 100
    #: JVM options added to the scorer's Spark driver (spark.driver.extraJavaOptions, after
    #: engine.conf's). Default: the quick JIT compiler only; see docs/streaming.md.
    jvm_options: str = "-XX:TieredStopAtLevel=1"
    #: Prometheus /metrics of the scorer on this port (null = off): counts, alerts, batch
    #: timing and lag, drift of the score and features over the last metrics_window scored
    #: events against the bundle's reference (levels from the monitor group); docs/streaming.md.
    metrics_port: Optional[int] = None
    metrics_host: str = "127.0.0.1"
    metrics_window: int = 5000
    #: After the stream ends (once, or a stop), keep /metrics up this long so the last
    #: scrape sees the final counts; a second stop signal ends it sooner.
    metrics_linger: str = "0s"
    #: A second bundle (uri) scoring the same released events on the live feature values;
    #: its decisions go to the "shadow" output only, never to the alerts (needs the same plan).
    shadow: Optional[str] = None
    #: What computes the live model's score: native or an export made by task=export.
    model_runtime: ModelRuntime = ModelRuntime.native


@dataclass
class FileDeployConfig(StreamDeployConfig):
    """``deploy=file``: JSON-lines files in, JSON-lines files out; no broker."""

    #: Directory watched for new *.jsonl files (one transaction per line).
    input: str = "${paths.data_dir}/stream/in"
    #: Where alerts/, dead_letter/, deferred/, late/ (and decisions/) are written.
    output: str = "${paths.data_dir}/stream/out"
    #: Spark's maxFilesPerTrigger (null = every new file in one micro-batch).
    max_files_per_trigger: Optional[int] = None


@dataclass
class KafkaTopics:
    input: str = "transactions_raw"
    alerts: str = "aml_alerts"
    dead_letter: str = "aml_dead_letter"
    deferred: str = "aml_alerts_deferred"
    late: str = "aml_late"
    #: Every decision with its features (only with write_decisions).
    decisions: str = "aml_decisions"
    #: The shadow bundle's decision on every scored event (only with deploy.shadow).
    shadow: str = "aml_alerts_shadow"


@dataclass
class KafkaDeployConfig(StreamDeployConfig):
    """``deploy=kafka``: topic ``transactions_raw`` in, alert / dead-letter / deferred topics out."""

    connector: KafkaConnector = KafkaConnector.auto
    #: connector=python: who reads each micro-batch's records (auto | ranges | driver | tasks).
    reader: KafkaReader = KafkaReader.auto
    bootstrap_servers: str = "127.0.0.1:9092"
    #: Brokers of the output topics, when they are not the input's (null = bootstrap_servers).
    output_bootstrap_servers: Optional[str] = None
    topics: KafkaTopics = field(default_factory=KafkaTopics)
    #: Spark Kafka option startingOffsets for a new checkpoint: earliest | latest.
    starting_offsets: str = "earliest"
    #: Spark Kafka option maxOffsetsPerTrigger (null = no cap).
    max_records_per_batch: Optional[int] = None
    #: Further source options, passed as is (e.g. {kafka.security.protocol: SSL}).
    options: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- engine
class EngineName(str, Enum):
    polars = "polars"  # in-process polars (the reference engine)
    spark = "spark"  # the same rules and feature plan compiled to Spark (aml_pipeline/spark, docs/spark.md)


@dataclass
class EngineConfig:
    """Which engine runs the validation split (task=data) and the feature plan (task=features).

    Every other key applies to ``name: spark`` only and is ignored by polars.
    """

    #: The engine object the tasks call (:mod:`aml_pipeline.engines`), from the registry.
    _target_: str = "aml_pipeline.engines.polars.PolarsEngine"
    name: EngineName = EngineName.polars
    #: Spark master URL: local[*], local[2], spark://host:7077, yarn, k8s://https://host:6443.
    master: str = "local[*]"
    app_name: str = "aml_pipeline"
    #: spark.driver.memory (takes effect only when this process starts the JVM).
    driver_memory: str = "2g"
    #: spark.executor.memory (cluster masters; local mode runs inside the driver).
    executor_memory: str = "2g"
    #: spark.sql.shuffle.partitions.
    shuffle_partitions: int = 8
    #: Any further Spark conf, passed through as is (e.g. {spark.executor.instances: 4}).
    conf: dict[str, Any] = field(default_factory=dict)
    #: sparkContext.setCheckpointDir; null = <paths.data_dir>/_spark/checkpoints on a
    #: cluster master (local masters need none). On a cluster it must be a shared path
    #: (hdfs://, s3a://, ...).
    checkpoint_dir: Optional[str] = None
    #: How many account partitions the Spark engine runs the feature steps in (null: one
    #: per 500,000 events, at least the default parallelism). Each is one Python task
    #: holding its events at once.
    account_partitions: Optional[int] = None


# ----------------------------------------------------------------------------- replay
class ReplayTarget(str, Enum):
    kafka = "kafka"  # one message per transaction (key src_account, CreateTime = publish time)
    file = "file"  # JSON-lines files in a directory (what deploy=file watches)


@dataclass
class ReplayConfig:
    """``task=replay``: publish validated transactions in event-time order (docs/streaming.md)."""

    target: ReplayTarget = ReplayTarget.kafka
    #: Events per second; 0 = as fast as possible.
    rate: float = 0.0
    #: Publish at most this many events (the earliest ones); null = all.
    limit: Optional[int] = None
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "transactions_raw"
    #: Partitions of the topic when replay has to create it.
    partitions: int = 1
    #: target=file: where the JSON-lines files go (deploy=file's default input).
    directory: str = "${paths.data_dir}/stream/in"
    #: target=file: events per file; target=kafka: events between progress updates.
    batch_size: int = 1000
    #: Further producer settings for librdkafka, as is (e.g. {security.protocol: SSL}).
    options: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- lifecycle
class JurisdictionGate(str, Enum):
    regression = "regression"  # blocked where the champion met the precision target and the challenger does not
    strict = "strict"  # blocked wherever the challenger misses a precision target
    off = "off"  # not checked


@dataclass
class PromoteConfig:
    """``task=promote``: the gate a challenger passes before it becomes the champion
    (``conf/promote/default.yaml``, docs/lifecycle.md)."""

    #: Registered-model aliases: the candidate and the version in production.
    challenger: str = "challenger"
    champion: str = "champion"
    #: The challenger's PR-AUC on the window may be at most this much below the champion's.
    pr_auc_epsilon: float = 0.01
    #: The challenger's alert count may differ from the champion's by at most this share
    #: (0.25 = within ±25 %).
    alert_volume_tolerance: float = 0.25
    #: Jurisdictions with a precision target: regression (blocked where the challenger misses
    #: it and the champion met it on the window, or had too few alerts to show it missed),
    #: strict (blocked wherever the challenger misses it) or off.
    jurisdiction_precision: JurisdictionGate = JurisdictionGate.regression
    #: Precision may fall this far below a target before it counts as missed.
    precision_slack: float = 0.0
    #: A jurisdiction where the challenger raises fewer alerts than this is reported, not judged.
    min_alerts: int = 10
    #: First instant of the judged window (ISO 8601); null = the later of both bundles'
    #: test windows. Events before it are history only.
    window_start: Optional[str] = None
    #: Check the gate and write the record, but never move the alias.
    dry_run: bool = False


class ExportFormat(str, Enum):
    onnx = "onnx"  # ONNX TreeEnsemble (onnxmltools), run by ONNX Runtime
    lleaves = "lleaves"  # the trees compiled to native code with LLVM (lleaves)
    treelite = "treelite"  # the trees compiled to a C shared library (treelite + tl2cgen)


@dataclass
class ExportConfig:
    """``task=export``: a portable copy of the bundle's LightGBM model (docs/lifecycle.md)."""

    format: ExportFormat = ExportFormat.onnx
    #: Largest |export score - native score| allowed on the bundle's validation window.
    tolerance: float = 1e-6


# ----------------------------------------------------------------------------- monitoring
@dataclass
class DriftLevel:
    """Two levels of one drift measure: ``warn`` is reported, ``alert`` flags drift."""

    warn: float = 0.1
    alert: float = 0.25


@dataclass
class MonitorConfig:
    """``task=monitor``: a scored window against the bundle's reference histograms, and
    performance over the labels that had time to arrive (``conf/monitor/default.yaml``,
    docs/monitoring.md)."""

    #: Bins of each numeric histogram: the reference's fine quantile bins merged into this many.
    bins: int = 10
    #: Population stability index of each column and of the score.
    psi: DriftLevel = field(default_factory=lambda: DriftLevel(0.1, 0.25))
    #: Jensen-Shannon distance (base 2, between 0 and 1) of each column and of the score.
    js: DriftLevel = field(default_factory=lambda: DriftLevel(0.1, 0.2))
    #: Rise of a column's share of missing values over the reference's.
    missing: DriftLevel = field(default_factory=lambda: DriftLevel(0.05, 0.2))
    #: Share of a numeric column's values outside the reference's [min, max].
    out_of_range: DriftLevel = field(default_factory=lambda: DriftLevel(0.05, 0.2))
    #: Share of a categorical column's values the reference never saw.
    novelty: DriftLevel = field(default_factory=lambda: DriftLevel(0.01, 0.05))
    #: Columns reported but never judged (e.g. calendar features over a short window).
    exclude: list[str] = field(default_factory=list)
    #: A window with fewer events is reported but not judged (its histograms are noise).
    min_events: int = 200
    #: The window: scored events at or after start and before end (ISO 8601, UTC); null = all.
    start: Optional[str] = None
    end: Optional[str] = None
    #: Labels (csv or parquet: event_id, label, labelled_at); null = drift only.
    labels: Optional[str] = None
    #: How long a label may take to arrive: an event counts for performance only once
    #: event_time + label_delay <= as_of (a duration: 30d, 12h).
    label_delay: str = "30d"
    #: When performance is judged (ISO 8601); null = the end of the window.
    as_of: Optional[str] = None
    #: Exit with code 3 when a judged column crosses an alert level (false: only the flag
    #: in monitor.json).
    fail_on_drift: bool = True
    #: Where monitor.json, the plots and monitor.html go.
    output: str = "${paths.reports_dir}/monitor"


# ----------------------------------------------------------------------------- workbench
@dataclass
class WorkbenchConfig:
    """``task=workbench``: the investigators' web pages over the case database
    (``conf/workbench/default.yaml``, docs/workbench.md)."""

    host: str = "127.0.0.1"
    port: int = 8050
    #: The case database (SQLAlchemy URL): the one task=cases fills.
    db_url: str = MISSING
    #: The key that signs session cookies comes from env AML_WORKBENCH_SECRET or, when that
    #: is unset, from this file, created with a random key (mode 0600) on the first start;
    #: null = workbench.secret beside a SQLite database, under paths.reports_dir otherwise.
    secret_file: Optional[str] = None
    #: Mark the session cookie Secure (true behind HTTPS; the browser then never sends it over http).
    secure_cookies: bool = False
    #: A login lasts this long (a duration), then the user logs in again.
    session_max_age: str = "8h"
    #: Cases per queue page.
    page_size: int = 50
    #: The validated transactions the alerts were scored from (task=data's parquet): the
    #: case page's transactions and money flow. Missing file: the alerted transfers only.
    transactions: Optional[str] = None
    #: The case page shows the account's transactions from this long before its first
    #: alert (the longest feature window) up to its last alert.
    window: str = "7d"
    #: The money-flow picture: counterparties up to this many hops, at most this many transfers.
    flow_hops: int = 2
    flow_max_edges: int = 200
    log_level: str = "warning"


# ----------------------------------------------------------------------------- cases
class CaseSubject(str, Enum):
    src_account = "src_account"  # the sender: whose payment the alert is about (the default)
    dst_account = "dst_account"  # the receiver (e.g. a mule account collecting fan-in)


@dataclass
class CasesKafkaConfig:
    """``task=cases`` reading the streaming scorer's alert topics (deploy=kafka's
    ``deploy.topics.alerts`` and ``.deferred``) with a consumer group: offsets are committed
    after each batch lands in the database (ingestion is idempotent by event id, so a
    batch read twice after a crash adds nothing)."""

    #: host:port[,host:port]; null = read input= instead.
    bootstrap_servers: Optional[str] = None
    topics: list[str] = field(default_factory=lambda: ["aml_alerts", "aml_deferred"])
    group_id: str = "aml-cases"
    #: Without cases.follow: stop once every partition is read to its end, or after this
    #: many seconds without a record.
    idle_seconds: float = 10.0
    #: Extra consumer settings (librdkafka names, e.g. security.protocol).
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class CasesConfig:
    """The case database (``task=cases``, ``task=labels``, the workbench): where it lives and
    how alerts become cases (``conf/cases/default.yaml``, docs/cases.md)."""

    #: SQLAlchemy URL: sqlite:///path/cases.db (the default, embedded) or
    #: postgresql://user:password@host:port/database (psycopg 3); a bare path means SQLite.
    db: str = "sqlite:///${paths.data_dir}/cases.db"
    #: An alert joins its account's active case when it comes at most this long after the
    #: case's latest alert; otherwise it opens a new case (a duration, or null: no limit).
    period: Optional[str] = "30d"
    #: Which account an alert's case is about.
    subject: CaseSubject = CaseSubject.src_account
    #: Canonical events (parquet) to take the accounts and amounts from when the alerts lack
    #: them (evaluate's test scores); null: the alerts must carry them.
    events: Optional[str] = "${paths.data_dir}/validated/transactions.parquet"
    #: task=cases on a folder (the stream's alerts/): keep watching it for new files.
    follow: bool = False
    #: Seconds between two looks at the folder when following.
    poll_seconds: float = 5.0
    #: Stop following after this many looks (null: until interrupted).
    max_polls: Optional[int] = None
    #: task=labels: "suspicious – escalate" gives label 1 at the time of the decision (a
    #: later false-positive decision replaces it); false: only SARs and false positives.
    label_escalated: bool = True
    #: task=cases from the streaming scorer's Kafka topics instead of input=.
    kafka: CasesKafkaConfig = field(default_factory=lambda: CasesKafkaConfig())


# ----------------------------------------------------------------------------- users
class UsersAction(str, Enum):
    add = "add"  # a new user users.name with users.role
    password = "password"  # a new password for users.name
    deactivate = "deactivate"  # users.name can no longer log in or act (kept for the audit trail)
    activate = "activate"  # users.name can log in again
    list = "list"  # every user, role and whether active


class UserRole(str, Enum):
    analyst = "analyst"  # reviews cases and decides
    supervisor = "supervisor"  # also approves another user's SAR and assigns cases to anyone


@dataclass
class UsersConfig:
    """``task=users``: the workbench's users, kept in the case database (``cases.db``).

    The password comes from the environment variable ``password_env`` or, at a terminal, a
    prompt: never from the command line or the config, which end up in logs and run records."""

    action: UsersAction = UsersAction.add
    name: Optional[str] = None
    role: UserRole = UserRole.analyst
    password_env: str = "AML_WORKBENCH_PASSWORD"


# ----------------------------------------------------------------------------- root
@dataclass
class AppConfig:
    task: Task = Task.all
    seed: int = 42
    #: Name of the experiment, used in run names and reports.
    name: str = "default"
    paths: PathsConfig = field(default_factory=PathsConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    source: Any = MISSING
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    thresholds: ThresholdsConfig = field(default_factory=ThresholdsConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    #: One of DEPLOY_SCHEMAS: the online service (deploy=service) or a streaming scorer.
    deploy: Any = MISSING
    #: task=score: the bundle (folder path, runs:/<id>/bundle or models:/<name>@<alias>)
    #: and the input file (parquet in the canonical schema, or the configured source).
    bundle: Optional[str] = None
    input: Optional[str] = None
    output: Optional[str] = None
    #: task=replay: what to publish, where and how fast.
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    #: task=monitor: drift and label-delayed performance of a scored window.
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    #: task=promote: the gate (conf/promote/); task=export: the format.
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    #: task=cases / task=labels / the workbench: the case database and its grouping.
    cases: CasesConfig = field(default_factory=CasesConfig)
    #: task=workbench: the investigators' web pages (conf/workbench/).
    workbench: WorkbenchConfig = field(default_factory=WorkbenchConfig)
    #: task=users: who may log in to the workbench.
    users: UsersConfig = field(default_factory=UsersConfig)


SOURCE_SCHEMAS = {
    "base_synthetic": SyntheticSourceConfig,
    "base_paysim": PaySimSourceConfig,
    "base_amlsim": AmlSimSourceConfig,
    "base_amlworld": AmlWorldSourceConfig,
    "base_tabular": TabularSourceConfig,
}

DEPLOY_SCHEMAS = {
    "base_deploy": DeployConfig,  # deploy=service
    "base_stream_file": FileDeployConfig,  # deploy=file
    "base_stream_kafka": KafkaDeployConfig,  # deploy=kafka
}


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=AppConfig)
    cs.store(group="paths", name="base_paths", node=PathsConfig)
    cs.store(group="validation", name="base_validation", node=ValidationConfig)
    for name, node in SOURCE_SCHEMAS.items():
        cs.store(group="source", name=name, node=node)
    cs.store(group="features", name="base_features", node=FeaturesConfig)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="weighting", name="base_weighting", node=WeightingConfig)
    cs.store(group="split", name="base_split", node=SplitConfig)
    cs.store(group="thresholds", name="base_thresholds", node=ThresholdsConfig)
    cs.store(group="evaluation", name="base_evaluation", node=EvaluationConfig)
    cs.store(group="mlflow", name="base_mlflow", node=MlflowConfig)
    cs.store(group="engine", name="base_engine", node=EngineConfig)
    cs.store(group="monitor", name="base_monitor", node=MonitorConfig)
    cs.store(group="promote", name="base_promote", node=PromoteConfig)
    cs.store(group="cases", name="base_cases", node=CasesConfig)
    cs.store(group="workbench", name="base_workbench", node=WorkbenchConfig)
    for name, node in DEPLOY_SCHEMAS.items():
        cs.store(group="deploy", name=name, node=node)
