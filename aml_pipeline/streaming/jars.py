"""Java artifacts from Maven Central, resolved with ``mvn`` from the poms in ``maven/``.

Two sets of jars, each cached under ``<cache>/jars/<name>-<version>/`` once ``mvn`` has
copied them there; after that no network and no ``mvn`` are needed. ``<cache>`` is
:func:`cache_dir`: ``$AML_CACHE_DIR``; else, running from a clone, ``.cache/`` at its root
(git-ignored; the tests and ``.ci/run`` use it); else the user's cache folder
(``$XDG_CACHE_HOME/aml_pipeline``, by default ``~/.cache/aml_pipeline``):

- :func:`kafka_broker_jars`: Apache Kafka's broker (KRaft), for the tests and benchmarks
  (:class:`aml_pipeline.testing.broker.KafkaBroker`);
- :func:`spark_kafka_jars`: Spark's own Kafka connector, ``spark-sql-kafka-0-10_2.13``,
  for ``deploy.connector=spark`` (passed to the session as ``spark.jars``).

Resolving is ``mvn -B -q -f maven/<name>.pom.xml dependency:copy-dependencies``; two
processes resolving at once (pytest's workers) take turns on a lock file. Failures raise
:class:`JarsUnavailable` with the reason in one line.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

MAVEN = Path(__file__).with_name("maven")
KAFKA_VERSION = "4.4.0"
#: Spark releases whose connector Maven Central does not serve, mapped to the connector
#: release used instead, each checked by the test suite against that pyspark (the Kafka
#: tests of the scorer and of the connector run with it). pyspark 4.3.0: Maven Central
#: serves spark-sql-kafka-0-10_2.13 up to 4.2.0.
NEAREST_CONNECTOR = {"4.3.0": "4.2.0"}
#: How long a failed resolution is remembered (no mvn call per start while it lasts).
MISS_SECONDS = 3600.0


class JarsUnavailable(RuntimeError):
    """The jars are not cached and ``mvn`` could not fetch them (message: why, in one line)."""


def cache_dir() -> Path:
    """Where the jars are cached. An installed package (``pip install .``) lives in
    site-packages, which is no place for downloads (often read-only, and shared by every
    user of the environment), so outside a clone the user's cache folder holds them."""
    env = os.environ.get("AML_CACHE_DIR")
    if env:
        return Path(env)
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file():  # a clone or an editable install of one
        return root / ".cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aml_pipeline"


def _jars(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jar"))


def resolve(pom: str, name: str, version: str, properties: dict[str, str], scope: str = "runtime",
            fetch: bool = True, timeout: float = 600.0) -> list[Path]:
    """The jars of ``maven/<pom>`` at ``properties`` (cached as ``<name>-<version>``).

    ``fetch=False``: only what is cached (raises JarsUnavailable otherwise)."""
    root = cache_dir() / "jars"
    target = root / f"{name}-{version}"
    done = target / ".complete"
    if done.exists():
        return _jars(target)
    miss = root / f"{name}-{version}.unavailable"
    if not fetch:
        raise JarsUnavailable(f"{name} {version} is not in {root} (resolve it once with mvn: python -m aml_pipeline.streaming.jars)")
    if miss.exists() and time.time() - miss.stat().st_mtime < MISS_SECONDS:
        raise JarsUnavailable(miss.read_text().strip())
    mvn = shutil.which("mvn")
    if mvn is None:
        raise JarsUnavailable(f"{name} {version} is not cached and mvn is not installed (apt-get install maven)")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be resolving the same jars
        if done.exists():
            return _jars(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        cmd = [mvn, "-B", "-q", "-f", str(MAVEN / pom), "dependency:copy-dependencies",
               f"-DoutputDirectory={tmp}", f"-DincludeScope={scope}",
               *[f"-D{k}={v}" for k, v in properties.items()]]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            r = None
        if r is None or r.returncode != 0 or not _jars(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            detail = "timed out" if r is None else _mvn_error(r.stdout + r.stderr)
            reason = f"mvn could not resolve {name} {version}: {detail}"
            miss.write_text(reason + "\n")
            raise JarsUnavailable(reason)
        (tmp / ".complete").write_text(" ".join(cmd[1:]) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    miss.unlink(missing_ok=True)
    return _jars(target)


def _mvn_error(text: str) -> str:
    for line in text.splitlines():
        line = line.replace("\x1b[0m", "").strip()
        if line.startswith("[ERROR]") and len(line) > 8:
            return line[8:].split(" -> [Help")[0][:300]
    return (text.strip().splitlines() or ["no output"])[-1][:300]


def kafka_broker_jars(fetch: bool = True) -> list[Path]:
    """Apache Kafka's broker and tools (``kafka.Kafka``, ``kafka.tools.StorageTool``)."""
    return resolve("kafka-broker.pom.xml", "kafka", KAFKA_VERSION, {"kafka.version": KAFKA_VERSION}, fetch=fetch)


def pyspark_version() -> str:
    import pyspark

    return pyspark.__version__


def spark_kafka_jars(spark_version: str | None = None, fetch: bool = True) -> tuple[list[Path], str]:
    """(jars, connector version) of ``spark-sql-kafka-0-10_2.13`` for this pyspark: its own
    release when Maven Central serves it, else the one :data:`NEAREST_CONNECTOR` names."""
    version = spark_version or pyspark_version()
    errors = []
    for candidate in dict.fromkeys([version, *([NEAREST_CONNECTOR[version]] if version in NEAREST_CONNECTOR else [])]):
        try:
            return resolve("spark-sql-kafka.pom.xml", "spark-sql-kafka", candidate, {"spark.version": candidate},
                           scope="compile", fetch=fetch), candidate
        except JarsUnavailable as exc:
            errors.append(str(exc))
    raise JarsUnavailable("; ".join(errors))


def main(argv: list[str] | None = None) -> None:
    """``python -m aml_pipeline.streaming.jars``: resolve (and cache) the broker's and the
    connector's jars now, e.g. in CI before the tests; prints where they are."""
    parser = argparse.ArgumentParser(prog="python -m aml_pipeline.streaming.jars", description=main.__doc__)
    parser.add_argument("what", nargs="*", metavar="kafka|spark-kafka", help="what to resolve (default: both)")
    args = parser.parse_args(argv)
    args.what = args.what or ["kafka", "spark-kafka"]
    if set(args.what) - {"kafka", "spark-kafka"}:
        parser.error(f"unknown: {' '.join(sorted(set(args.what) - {'kafka', 'spark-kafka'}))} (kafka or spark-kafka)")
    if "kafka" in args.what:
        jars = kafka_broker_jars()
        print(f"Apache Kafka {KAFKA_VERSION} broker: {len(jars)} jars in {jars[0].parent}")
    if "spark-kafka" in args.what:
        jars, version = spark_kafka_jars()
        note = "" if version == pyspark_version() else f" (pyspark {pyspark_version()}'s own release is not served)"
        print(f"spark-sql-kafka-0-10_2.13 {version}{note}: {len(jars)} jars in {jars[0].parent}")


if __name__ == "__main__":
    main()
