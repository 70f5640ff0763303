"""What an install costs: venv size and wall time of `pip install` for the core and the extras.

Usage: python bench/install.py [--specs .,.[all,test]] [--python PYTHON] [--no-cache]

Per spec, a fresh venv (``python -m venv``) under a temporary folder, then ``pip install
<clone><extras>`` from this clone, timed; the size is every file under the venv (what
``du`` counts, bytecode included). The first spec is the comparison's base: each other is
printed as a ratio to it (the core against everything is the choice the extras exist for).
``--no-cache`` downloads every package again (what a fresh machine pays). Figures also go
to ``bench/out/install.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def tree_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                total += os.path.getsize(path)
    return total


def measure(spec: str, python: str, no_cache: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="aml-install-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        empty = tree_bytes(venv)
        cmd = [str(venv / "bin" / "pip"), "install", "-q", f"{ROOT}{spec[1:]}" if spec.startswith(".") else spec]
        if no_cache:
            cmd.append("--no-cache-dir")
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - start
        size = tree_bytes(venv)
    return {"spec": spec, "python": python, "seconds": round(seconds, 1), "venv_mb": round(size / 2**20),
            "empty_venv_mb": round(empty / 2**20), "no_cache": no_cache}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--specs", default=".", help="install specs separated by ';', e.g. '.;.[all,test]' (the first is the base of the ratios)")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--no-cache", action="store_true")
    args = ap.parse_args()
    specs = [s for s in args.specs.split(";") if s]
    print(f"install bench: {len(specs)} spec(s), {args.python}, load average {os.getloadavg()[0]:.1f}")
    results = []
    for spec in specs:
        r = measure(spec, args.python, args.no_cache)
        results.append(r)
        ratio = "" if not results[:-1] else f"  ({r['venv_mb'] / results[0]['venv_mb']:.1f}x the size of {results[0]['spec']})"
        print(f"  pip install {spec:<14} {r['venv_mb']:>6,} MB venv (empty {r['empty_venv_mb']} MB)  "
              f"{r['seconds']:>6.1f} s{' (no pip cache)' if args.no_cache else ''}{ratio}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "install.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
