"""The workbench in a real browser: a small trained run's alerts, scored by ``task=score``,
become cases; ``task=workbench`` serves them from a subprocess; headless Chromium (Debian's,
driven by Playwright's Python package) logs in as an analyst, opens the top case, sees the
evidence and the money-flow picture, files *suspicious – escalate* on one case and *SAR
filed* on another; a supervisor approves the SAR. ``task=labels`` exports both decisions
and a retrain with ``source.labels=`` takes them as the truth.

It also takes the screenshots docs/workbench.md shows: into the test's temporary folder, or
into the folder named by ``AML_SCREENSHOTS`` (``AML_SCREENSHOTS=docs/img`` refreshes the
committed ones), so a test run leaves the working tree as it was."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest

from aml_pipeline import cases
from aml_pipeline.tasks import run_task
from tests.conftest import ROOT, SMALL_RUN, cli_env, compose_config, train_small_run

CHROMIUM = "/usr/bin/chromium"
#: Without the background-networking flags Chromium stalls on a machine with no network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
USERS = {"ana": ("analyst", "ana-password-1"), "sam": ("supervisor", "sam-password-1")}

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small trained run, its test data scored by task=score, the alerts in a case database."""
    root = tmp_path_factory.mktemp("workbench_run")
    paths, _, _ = train_small_run(root)
    scores = root / "scores.parquet"
    common = [*SMALL_RUN, *paths, "mlflow.enabled=false", f"bundle={root / 'models/bundle'}"]
    run_task(compose_config([*common, "task=score", f"input={root / 'data/validated/transactions.parquet'}",
                             f"output={scores}"]))
    db_url = f"sqlite:///{root / 'cases.db'}"
    report = run_task(compose_config([*common, "task=cases", f"input={scores}", f"cases.db={db_url}"]))
    assert report["cases_opened"] >= 2 and report["alerts_added"] == pl.read_parquet(scores)["alert"].sum(), report
    db = cases.open_db(db_url)
    for name, (role, password) in USERS.items():
        cases.create_user(db, name, password, role=role)
    yield {"root": root, "paths": paths, "common": common, "db": db, "db_url": db_url, "scores": scores}
    db.close()


@pytest.fixture(scope="module")
def server(run):
    """``task=workbench`` in a subprocess on a free port, stopped with SIGTERM at the end."""
    port = free_port()
    env = {**cli_env(), "PYTHONPATH": str(ROOT), "AML_WORKBENCH_SECRET": "k" * 48}
    proc = subprocess.Popen([sys.executable, "-m", "aml_pipeline", "task=workbench", *run["paths"],
                             f"workbench.port={port}", f"workbench.db_url={run['db_url']}"],
                            cwd=run["root"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/login", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"task=workbench did not start: {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)
    yield url
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "k" * 48 not in err  # the session key is never printed


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing (apt-get install -y chromium; .ci/run installs it)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def log_in(page, url: str, name: str) -> None:
    page.goto(f"{url}/queue")
    assert page.url.startswith(f"{url}/login?next=")  # nothing without a login
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(USERS[name][1])
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{url}/queue")


def decide(page, words: str, note: str) -> None:
    page.get_by_label(words, exact=True).check()
    page.get_by_label("Note").fill(note)
    page.get_by_role("button", name="Record decision").click()
    page.wait_for_load_state()


def test_analyst_and_supervisor_walk_through(run, server, browser, tmp_path):
    db = run["db"]
    shots = Path(os.environ.get("AML_SCREENSHOTS") or tmp_path)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    log_in(page, server, "ana")

    # the queue: open cases, riskiest first, as the database orders them
    rows = page.locator("table.queue tbody tr")
    expected = cases.list_cases(db, page_size=50).items
    assert rows.count() == min(len(expected), 50) and len(expected) >= 2
    first_link = rows.nth(0).get_by_role("link")
    assert first_link.inner_text() == f"#{expected[0].id}"
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "workbench-queue.png"))
    # keyboard: the first Tab reaches the skip link, and the focus is visible
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"

    # the top case: evidence, stored reasons, the flow picture
    top, second = expected[0], expected[1]
    first_link.click()
    page.wait_for_url(f"{server}/cases/{top.id}")
    detail = cases.get_case(db, top.id)
    alert = detail.top_alert
    assert alert.reasons, "the scorer stored no reasons with the alert"
    assert page.get_by_text(alert.reasons[0], exact=True).first.is_visible()
    assert page.get_by_text(alert.event_id, exact=True).first.is_visible()
    assert page.get_by_text((alert.config_hash or "")[:12]).first.is_visible()
    flow = page.locator("svg.flow")
    assert flow.is_visible() and flow.locator("g.node").count() >= 2 and flow.locator("g.edge.alerted").count() >= 1
    assert page.locator("svg.flow g.node.center title").text_content() == f"{top.subject_account} (hop 0)"
    assert page.locator("table.grid tr.alerted").count() >= 1  # the alerted transfer among the transactions
    page.screenshot(path=str(shots / "workbench-case.png"))
    page.locator("figure.flow-figure").screenshot(path=str(shots / "workbench-flow.png"))

    # the decision by keyboard alone: arrows choose within the radio group, Tab moves on
    page.get_by_label("false positive", exact=True).focus()
    page.keyboard.press("ArrowRight")
    assert page.get_by_label("suspicious – escalate", exact=True).is_checked()
    page.keyboard.press("Tab")
    page.keyboard.type("forwarding pattern, escalating")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Record decision"
    page.keyboard.press("Enter")
    page.wait_for_url(f"{server}/cases/{top.id}")
    assert page.get_by_role("status").inner_text().startswith("Recorded: suspicious")
    assert cases.get_case(db, top.id).case.status == "escalated"

    # the second case: a SAR, which waits for a supervisor
    page.goto(f"{server}/cases/{second.id}")
    decide(page, "SAR filed", "structured deposits, SAR filed")
    assert "waiting for a supervisor" in page.get_by_role("status").inner_text()
    assert page.get_by_text("You filed it").is_visible()
    assert page.get_by_role("button", name="Approve SAR").count() == 0
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(f"{server}/login")
    page.goto(f"{server}/cases/{second.id}")
    assert "/login" in page.url

    # the supervisor approves it
    log_in(page, server, "sam")
    page.get_by_role("link", name="Approvals").click()
    page.get_by_role("link", name=f"#{second.id}").click()
    page.get_by_label("Note").fill("agreed")
    page.get_by_role("button", name="Approve SAR").click()
    page.wait_for_load_state()
    assert page.get_by_role("status").inner_text() == "SAR approved by sam"
    closed = cases.get_case(db, second.id)
    assert closed.case.status == "closed" and closed.case.disposition == "sar_filed"
    assert [(e.username, e.action) for e in closed.audit if e.action in ("decide", "approve")] == [
        ("ana", "decide"), ("sam", "approve")]
    page.close()

    for name in ("workbench-queue.png", "workbench-case.png", "workbench-flow.png"):
        size = (shots / name).stat().st_size
        assert 10_000 < size < 400_000, (name, size)

    # the decisions become labels, and a retrain takes them as the truth
    labels_path = run["root"] / "labels.parquet"
    run_task(compose_config([*run["common"], "task=labels", f"output={labels_path}", f"cases.db={run['db_url']}"]))
    labels = pl.read_parquet(labels_path)
    decided = {a.event_id for c in (top, second) for a in cases.get_case(db, c.id).alerts}
    assert set(labels["event_id"]) == decided and labels["label"].to_list() == [1] * len(decided)
    assert set(labels["source"]) == {"workbench:suspicious_escalate", "workbench:sar_filed"}
    before = pl.read_parquet(run["root"] / "data/validated/transactions.parquet").filter(pl.col("event_id").is_in(decided))
    retrain = run["root"] / "retrain"
    paths = [f"paths.data_dir={retrain / 'data'}", f"paths.models_dir={retrain / 'models'}",
             f"paths.reports_dir={retrain / 'reports'}", f"source.labels={labels_path}", "mlflow.enabled=false"]
    for task in ("data", "features", "train"):
        run_task(compose_config([*SMALL_RUN, *paths, f"task={task}"]))
    summary = json.loads((retrain / "data/validated/summary.json").read_text())["labels_file"]
    assert summary["events_matched"] == len(decided) and summary["not_in_data"] == 0
    assert summary["changed"] == int((before["label"] != 1).sum())
    after = pl.read_parquet(retrain / "data/validated/transactions.parquet").filter(pl.col("event_id").is_in(decided))
    assert after["label"].to_list() == [1] * len(decided)
    assert (retrain / "models/bundle").is_dir()
