"""Throwaway Kafka brokers on 127.0.0.1 for tests, benchmarks and docs.

- :class:`KafkaBroker`: **Apache Kafka** 4.x in KRaft mode (one process, broker and
  controller), run from its Maven Central jars (:func:`aml_pipeline.streaming.jars.kafka_broker_jars`,
  resolved with ``mvn`` on first use and cached under ``.cache/jars/``). What the tests use.
- :class:`LocalBroker`: ``noida-db`` (PyPI, the ``test`` extra), one binary that speaks the
  Kafka protocol; needs no Java. Kept for its own tests and for machines without Maven.

    with KafkaBroker(topics={"transactions_raw": 2, "aml_alerts": 1}) as broker:
        broker.bootstrap   # "127.0.0.1:PORT"

Either runs in its own process group with a temporary data directory; leaving the ``with``
block stops the group (SIGTERM, then SIGKILL) and deletes the directory. Users with a real
Kafka cluster point ``kafka.bootstrap.servers`` at it instead; nothing else changes.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Mapping, Sequence

from aml_pipeline.errors import UserError


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the process that started it dies, so a
    killed test run leaves no broker behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def broker_binary() -> Path:
    """The noida-db executable shipped inside its wheel (run directly: one process to stop)."""
    try:
        from importlib.resources import files

        path = Path(str(files("noida_db").joinpath("noida-db")))
    except ModuleNotFoundError:
        raise UserError("the local broker needs noida-db: pip install -e '.[test]' (or pip install noida-db)") from None
    if not path.is_file():
        raise UserError(f"noida-db is installed but its binary is missing at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)  # the wheel's own wrapper does the same on first use
    return path


class LocalBroker:
    """Start noida-db's Kafka service on a free 127.0.0.1 port; stop it on exit.

    Start it from a thread that outlives its use (the main thread, a pytest fixture): on
    Linux the broker is stopped when the starting thread ends."""

    name = "noida-db"

    def __init__(self, topics: Mapping[str, int] | Sequence[str] | None = None, port: int | None = None,
                 data_dir: str | Path | None = None, start_timeout: float = 30.0):
        self.topics = dict(topics) if isinstance(topics, Mapping) else {t: 1 for t in (topics or [])}
        self.port = port
        self._data_dir = Path(data_dir) if data_dir else None
        self._own_dir = data_dir is None
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        #: Seconds from start() until the broker answered a metadata request (Apache Kafka: the
        #: storage format included; the jars' first resolution too, when it happens).
        self.start_seconds: float | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "LocalBroker":
        if self.proc is not None:
            return self
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="aml-kafka-"))
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or _free_port()
        self.log_path = self._data_dir / "broker.log"
        t0 = time.monotonic()
        try:
            command = self._command()  # Apache Kafka: resolves the jars and formats the log directory
        except BaseException:
            self.stop()
            raise
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        log.close()
        try:
            self._wait_ready()
            self.start_seconds = time.monotonic() - t0
            if self.topics:
                self.create_topics(self.topics)
        except BaseException:
            self.stop()
            raise
        return self

    def _command(self) -> list[str]:
        return [str(broker_binary()), "start", "--data-dir", str(self._data_dir / "data"), "--host", "127.0.0.1",
                "--only", "kafka", "--kafka-port", str(self.port)]

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace") if self.log_path else ""
        except OSError:
            text = ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self) -> None:
        """Until the broker answers a metadata request (bounded by ``start_timeout``)."""
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode} before accepting "
                                   f"connections on {self.bootstrap}; log tail:\n{self._log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                if AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=5).brokers:
                    return
            except Exception:  # not listening yet
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not accept Kafka connections on {self.bootstrap} within "
                           f"{self.start_timeout:.0f}s; log tail:\n{self._log_tail()}")

    def create_topics(self, topics: Mapping[str, int] | Sequence[str]) -> None:
        """Create topics (name -> partitions); existing ones are left as they are."""
        from confluent_kafka import KafkaError
        from confluent_kafka.admin import AdminClient, NewTopic

        wanted = dict(topics) if isinstance(topics, Mapping) else {t: 1 for t in topics}
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics([NewTopic(t, num_partitions=int(n), replication_factor=1)
                                       for t, n in wanted.items()], operation_timeout=10)
        for name, fut in futures.items():
            try:
                fut.result(timeout=15)
            except Exception as exc:
                err = exc.args[0] if exc.args else None
                if getattr(err, "code", lambda: None)() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise RuntimeError(f"could not create topic {name}: {exc}") from None
        self.topics.update(wanted)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        elif proc is not None:
            proc.wait()
        if self._own_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def __enter__(self) -> "LocalBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


#: Broker settings of :class:`KafkaBroker` besides its listeners and log directory: one node
#: that is broker and controller, internal topics with one replica, no group rebalance delay.
KAFKA_SETTINGS = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.listener.names": "CONTROLLER",
    "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
    "inter.broker.listener.name": "PLAINTEXT",
    "num.partitions": "1",
    "auto.create.topics.enable": "true",
    "delete.topic.enable": "true",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "4",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
}
#: The broker's JVM: a small heap, the quick JIT only and the serial collector, so that it
#: starts in ~2 s and leaves the 2 cores of a test machine to Spark and the scorer.
KAFKA_JVM_OPTIONS = ("-Xms128m", "-Xmx768m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
                     "-Djava.awt.headless=true")


class KafkaBroker(LocalBroker):
    """Apache Kafka (KRaft, one node) on free 127.0.0.1 ports, from its Maven Central jars.

    ``start()`` formats a fresh log directory (``kafka.tools.StorageTool format --standalone``,
    what ``kafka-storage.sh format`` runs), starts ``kafka.Kafka`` with
    ``java -cp <jars>`` and waits until it answers a metadata request (~2–4 s on 2 cores).
    ``settings`` adds or overrides broker properties (``{"log.retention.check.interval.ms": "1000"}``).
    The jars are resolved with ``mvn`` on first use (``fetch=True``) and cached."""

    name = "Apache Kafka"

    def __init__(self, topics: Mapping[str, int] | Sequence[str] | None = None, port: int | None = None,
                 data_dir: str | Path | None = None, start_timeout: float = 60.0,
                 settings: Mapping[str, str] | None = None, jvm_options: Sequence[str] = KAFKA_JVM_OPTIONS,
                 fetch: bool = True):
        super().__init__(topics, port, data_dir, start_timeout)
        self.settings = dict(settings or {})
        self.jvm_options = list(jvm_options)
        self.fetch = fetch
        self.controller_port: int | None = None

    def _command(self) -> list[str]:
        from aml_pipeline.streaming.jars import MAVEN, kafka_broker_jars

        java = shutil.which("java")
        if java is None:
            raise UserError("Apache Kafka needs Java 17 or later (apt-get install openjdk-17-jre-headless)")
        classpath = ":".join(str(j) for j in kafka_broker_jars(fetch=self.fetch))
        self.controller_port = _free_port()
        while self.controller_port == self.port:
            self.controller_port = _free_port()
        logs = self._data_dir / "data"
        props = {**KAFKA_SETTINGS,
                 "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
                 "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                 "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
                 "log.dirs": str(logs), **self.settings}
        config = self._data_dir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        jvm = [java, *self.jvm_options, f"-Dlog4j2.configurationFile=file:{MAVEN / 'broker-log4j2.properties'}",
               "-cp", classpath]
        cluster_id = "-"
        while cluster_id.startswith("-"):  # one in 64 would read as an option (Kafka's own ids avoid it too)
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        fmt = subprocess.run([*jvm, "kafka.tools.StorageTool", "format", "--standalone", "--ignore-formatted",
                              "--cluster-id", cluster_id, "--config", str(config)],
                             capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        with open(self.log_path, "a") as log:
            log.write(fmt.stdout + fmt.stderr)
        if fmt.returncode != 0:
            raise RuntimeError(f"kafka-storage format failed (exit {fmt.returncode}); log tail:\n{self._log_tail()}")
        return [*jvm, "kafka.Kafka", str(config)]


def main(argv: list[str] | None = None) -> None:
    """``python -m aml_pipeline.testing.broker [--port 9092] [--topic transactions_raw:2 ...] [--noida]``:
    a local Apache Kafka broker (or noida-db) in the foreground (Ctrl-C stops it), to try
    ``deploy=kafka`` and ``task=replay`` without a Kafka cluster."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m aml_pipeline.testing.broker", description=main.__doc__)
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--data-dir", default=None, help="keep the data here (default: a temporary directory)")
    parser.add_argument("--topic", action="append", default=[], metavar="NAME[:PARTITIONS]")
    parser.add_argument("--noida", action="store_true", help="noida-db instead of Apache Kafka (no Java needed)")
    args = parser.parse_args(argv)
    topics = {}
    for spec in args.topic:
        name, _, parts = spec.partition(":")
        topics[name] = int(parts or 1)
    def _interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)  # stop cleanly (and delete the temp dir) on SIGTERM too
    kind = LocalBroker if args.noida else KafkaBroker
    with kind(topics, port=args.port, data_dir=args.data_dir) as broker:
        print(f"{broker.name} on {broker.bootstrap} (up in {broker.start_seconds:.1f}s); topics: "
              f"{', '.join(f'{t}:{n}' for t, n in topics.items()) or 'none (auto-created on produce)'}; Ctrl-C stops it",
              flush=True)
        try:
            while broker.proc is not None and broker.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
