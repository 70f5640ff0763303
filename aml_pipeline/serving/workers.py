"""``deploy.workers=N``: N service processes on one port, sharing the Redis store.

Why processes: a decision is CPU-bound Python and the store's read-score-append runs one at
a time per process, so one process uses one core. N processes use N cores; the Redis store
is the state they share (each keeps cached copies tagged with the accounts' versions, so
every process reads exactly what the others wrote). The embedded ``memory`` store cannot be
shared: each process would hold its own history and compute wrong features, so N > 1 with
it is refused.

How: the parent checks the configuration, warms the store once (``deploy.warm_from``), then
starts N fresh interpreters (``python -m aml_pipeline.serving.server CONFIG INDEX``: no
state inherited from the parent's thread pools). Each child is the ordinary one-process
service, bound with ``SO_REUSEPORT`` so the kernel spreads new connections across them; a
child answers ``/health`` 503 until its own bundle is loaded. The parent forwards SIGTERM /
SIGINT, and stops the rest when one child fails. All children append to the one decision
log (whole lines, ``O_APPEND``), which is why rotation is refused with N > 1: several
processes renaming the same file would lose lines.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from aml_pipeline.config import option_value
from aml_pipeline.errors import UserError


def check_workers(cfg: DictConfig) -> int:
    """``deploy.workers`` as a number, refused with one line where it cannot give right answers."""
    d = cfg.deploy
    n = d.get("workers", 1)
    if not isinstance(n, int) or n < 1:
        raise UserError(f"deploy.workers={n!r}; allowed: a whole number >= 1")
    if n == 1:
        return 1
    backend = str(option_value(d.store.backend))
    if backend != "redis":
        raise UserError(f"deploy.workers={n} needs deploy.store.backend=redis (got {backend}): each process would "
                        f"hold its own embedded history and compute wrong features; allowed: workers=1 with memory")
    policy = d.get("decision_log_policy") or {}
    if policy.get("max_bytes") or policy.get("max_age"):
        raise UserError(f"deploy.workers={n}: decision-log rotation (deploy.decision_log_policy.max_bytes/max_age) "
                        f"needs workers=1 (several processes would rename one file); allowed: max_bytes=0, max_age=null")
    if not hasattr(socket, "SO_REUSEPORT"):
        raise UserError(f"deploy.workers={n} needs SO_REUSEPORT (Linux); allowed here: workers=1")
    return n


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A socket bound with SO_REUSEPORT, so sibling workers can listen on the same port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"deploy.host/port {host}:{port}: cannot listen there ({exc.strerror})") from None
    sock.set_inheritable(True)
    return sock


def check_port(host: str, port: int) -> None:
    """One line if nothing can listen on ``host:port`` (the service's and the workbench's check)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UserError(f"deploy.host/port {host}:{port}: cannot listen there ({exc.strerror})") from None


def has_module(module: str) -> bool:
    """Whether ``module`` is installed, without importing it (uvicorn's optional httptools, uvloop)."""
    return importlib.util.find_spec(module) is not None


def run_workers(cfg: DictConfig, n: int, key: str, warm: Callable[[], tuple[int, float]] | None) -> dict:
    """Warm once (``warm``: the shared store's warm-up, or None), start ``n`` worker processes,
    wait for them (see module doc)."""
    if warm is not None:
        n_warm, secs = warm()
        print(f"warmed the shared store: +{n_warm:,} events in {secs:.1f}s; starting {n} workers", file=sys.stderr,
              flush=True)
    child = OmegaConf.to_container(cfg, resolve=True)
    child["deploy"].update({"workers": 1, "warm_from": None, "warm_until": None, "api_key": None})
    with tempfile.TemporaryDirectory(prefix="aml_workers_") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(OmegaConf.to_yaml(OmegaConf.create(child)))
        env = {**os.environ, "AML_API_KEY": key}
        procs = [subprocess.Popen([sys.executable, "-m", "aml_pipeline.serving.server", str(path), str(i)], env=env)
                 for i in range(n)]
        stopped: list[int] = []

        def forward(signum, frame):
            stopped.append(signum)
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signum)

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, forward)
        failed = None
        while any(p.poll() is None for p in procs):
            for i, p in enumerate(procs):
                if p.poll() not in (None, 0) and failed is None and not stopped:
                    failed = (i, p.returncode)
                    forward(signal.SIGTERM, None)
            time.sleep(0.2)
    if failed is not None:
        raise UserError(f"deploy.workers: worker {failed[0]} exited with code {failed[1]}; the others were stopped")
    return {"served": True, "workers": n}
