"""Run ``task=serve`` in a child process and wait until it is ready (tests, benchmarks).

The child is the real command line (``python -m aml_pipeline task=serve ...``) on
127.0.0.1 and a free port; :meth:`ServiceProcess.start` polls ``/health`` until 200 and
fails with the child's last stderr lines if it exits first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from aml_pipeline.testing.local_redis import free_port

ROOT = Path(__file__).absolute().parents[2]


class ServiceProcess:
    def __init__(self, overrides: list[str], cwd: str | Path, api_key: str = "test-api-key-0123456789",
                 port: int | None = None, env: dict[str, str] | None = None):
        self.port = port or free_port()
        self.api_key = api_key
        self.cwd = Path(cwd)
        self.args = [sys.executable, "-m", "aml_pipeline", "task=serve", "deploy=service", "deploy.host=127.0.0.1",
                     f"deploy.port={self.port}", *overrides]
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "AML_API_KEY": api_key, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.stderr_path = self.cwd / f"service-{self.port}.err"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def start(self, timeout: float = 90.0) -> "ServiceProcess":
        self._err = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(self.args, cwd=self.cwd, env=self.env, stdout=subprocess.DEVNULL, stderr=self._err)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with code {self.proc.returncode}: {self.stderr_tail()}")
            try:
                if self.health()[0] == 200:
                    return self
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"service not ready within {timeout}s: {self.stderr_tail()}")

    def stderr_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.stderr_path.read_text().splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()
        code = self.proc.returncode
        self.proc = None
        return code

    def __enter__(self) -> "ServiceProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
