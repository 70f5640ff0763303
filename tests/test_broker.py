"""The local brokers the tests, benchmarks and docs start (aml_pipeline.testing.broker):
Apache Kafka (KRaft, the tests' broker) and noida-db (no Java needed). Each starts, creates
its topics, stops without a trace, and dies with the process that started it.
"""

from __future__ import annotations

import socket
import time

import pytest

from aml_pipeline.testing.broker import KafkaBroker, LocalBroker
from tests.kafka_topics import produce

#: The two local brokers: Apache Kafka (the tests' broker) and noida-db (no Java needed).
BROKERS = pytest.mark.parametrize("kind", ["KafkaBroker", "LocalBroker"])


@BROKERS
def test_local_broker_starts_creates_topics_and_stops(kind):
    with {"KafkaBroker": KafkaBroker, "LocalBroker": LocalBroker}[kind]({"a": 3, "b": 1}) as broker:
        port = broker.port
        produce(broker.bootstrap, "a", [(None, "x")] * 3)
        from confluent_kafka.admin import AdminClient

        topics = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10).topics
        assert len(topics["a"].partitions) == 3 and len(topics["b"].partitions) == 1
        proc, data = broker.proc, broker._data_dir
        assert broker.start_seconds < 60
    assert proc.poll() is not None and not data.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@BROKERS
def test_local_broker_dies_with_the_process_that_started_it(tmp_path, kind):
    """A test run killed with SIGKILL must not leave a broker behind."""
    import os
    import signal
    import subprocess
    import sys

    script = (f"from aml_pipeline.testing.broker import {kind}; import time\n"
              f"b = {kind}(data_dir={str(tmp_path / 'broker')!r}).start(); print(b.proc.pid, b.port, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pid, port = map(int, parent.stdout.readline().split())
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the broker outlived the process that started it")
