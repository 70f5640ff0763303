"""``LocalBroker``: a throwaway Kafka-protocol broker on 127.0.0.1 for tests, benchmarks and docs.

Real Apache Kafka needs a JVM distribution that package registries do not ship; ``noida-db``
(PyPI, the ``test`` extra) is one binary that speaks the Kafka protocol. What we rely on was
checked against it: topic creation through the admin API (and auto-create on produce),
several partitions per topic, assign + seek, watermark offsets, idempotent produce with
``acks=all``, CreateTime timestamps. Users with a real Kafka point
``kafka.bootstrap.servers`` at it instead; nothing else changes.

    with LocalBroker(topics={"transactions_raw": 2, "aml_alerts": 1}) as broker:
        broker.bootstrap   # "127.0.0.1:PORT"

The broker runs in its own process group with a temporary data directory; leaving the
``with`` block stops the group (SIGTERM, then SIGKILL) and deletes the directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
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

    def __init__(self, topics: Mapping[str, int] | Sequence[str] | None = None, port: int | None = None,
                 data_dir: str | Path | None = None, start_timeout: float = 30.0):
        self.topics = dict(topics) if isinstance(topics, Mapping) else {t: 1 for t in (topics or [])}
        self.port = port
        self._data_dir = Path(data_dir) if data_dir else None
        self._own_dir = data_dir is None
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "LocalBroker":
        if self.proc is not None:
            return self
        binary = broker_binary()
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="aml-kafka-"))
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or _free_port()
        self.log_path = self._data_dir / "broker.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(binary), "start", "--data-dir", str(self._data_dir / "data"), "--host", "127.0.0.1",
             "--only", "kafka", "--kafka-port", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        log.close()
        try:
            self._wait_ready()
            if self.topics:
                self.create_topics(self.topics)
        except BaseException:
            self.stop()
            raise
        return self

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
                raise RuntimeError(f"noida-db exited with code {self.proc.returncode} before accepting "
                                   f"connections on {self.bootstrap}; log tail:\n{self._log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=5)
                return
            except Exception:  # not listening yet
                time.sleep(0.1)
        raise RuntimeError(f"noida-db did not accept Kafka connections on {self.bootstrap} within "
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


def main(argv: list[str] | None = None) -> None:
    """``python -m aml_pipeline.streaming.broker [--port 9092] [--topic transactions_raw:2 ...]``:
    a local broker in the foreground (Ctrl-C stops it), to try ``deploy=kafka`` and
    ``task=replay`` without a Kafka cluster."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m aml_pipeline.streaming.broker", description=main.__doc__)
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--data-dir", default=None, help="keep the data here (default: a temporary directory)")
    parser.add_argument("--topic", action="append", default=[], metavar="NAME[:PARTITIONS]")
    args = parser.parse_args(argv)
    topics = {}
    for spec in args.topic:
        name, _, parts = spec.partition(":")
        topics[name] = int(parts or 1)
    def _interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)  # stop cleanly (and delete the temp dir) on SIGTERM too
    with LocalBroker(topics, port=args.port, data_dir=args.data_dir) as broker:
        print(f"Kafka-protocol broker (noida-db) on {broker.bootstrap}; topics: "
              f"{', '.join(f'{t}:{n}' for t, n in topics.items()) or 'none (auto-created on produce)'}; Ctrl-C stops it",
              flush=True)
        try:
            while broker.proc is not None and broker.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
