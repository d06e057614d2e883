"""The MLflow UI renders what the jobs track: a training run, and its evaluation as a child run, in headless Chromium.

A store with one training run and one evaluation is served by ``mlflow server`` on a free loopback port, and
Chromium's ``--dump-dom`` (after 15 s of virtual time for the single-page app) is checked for the run names.

What MLflow 3.17's UI shows where, found by hand with screenshots: the experiment page picks GenAI or model-training
pages from the sidebar switch (the URL's ``workflowType``, else the browser's remembered choice, GenAI at first), not
from the ``mlflow.experimentKind`` tag. ``#/experiments/<id>?workflowType=machine_learning`` lands on the Runs table,
where the training run is a row with a collapsed expander and the count includes its child ("2 matching runs"); the
evaluation's own page names it and links its parent.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from training.tracking import Tracker, init_store

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (.ci/run installs Debian's package)"),
]
TRAIN_NAME, EVAL_NAME = "tiny/mhc/seed7", "eval tiny/mhc/seed7"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("mlflow_ui")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    experiment_id = init_store(uri, "ui-check")
    train = Tracker(uri, "ui-check", TRAIN_NAME, {"model": {"n_layer": 2}}, {"arch": "mhc"})
    for step in range(5):
        train.log_metrics({"loss": 5.0 - step, "val_loss": 5.5 - step}, step)
    train.finish("completed")
    evaluation = Tracker(uri, "ui-check", EVAL_NAME, {"tasks": "piqa"}, {"kind": "evaluation"}, train.run_id)
    evaluation.log_metrics({"piqa/acc,none": 0.5}, 0)
    evaluation.finish("completed")

    port = _free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = (tmp / "server.log").open("wb")
    server = subprocess.Popen(cmd, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not answer within 120 s"
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        yield SimpleNamespace(base=base, experiment_id=experiment_id, train=train.run_id, eval=evaluation.run_id)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=20)
        log.close()


def _dom(url: str, profile: Path) -> str:
    """The DOM after the app settled, in a fresh browser profile (no remembered sidebar choice)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
    cmd += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    cmd += [f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--window-size=1400,900", "--dump-dom", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_experiment_lands_on_the_runs_table_with_the_evaluation_nested(ui, tmp_path: Path) -> None:
    dom = _dom(f"{ui.base}/#/experiments/{ui.experiment_id}?workflowType=machine_learning", tmp_path)
    assert "Runs - Experiment" in dom and ">Runs</h2>" in dom  # the runs table, by title and heading
    assert "No data available for the selected time range" not in dom and ">Overview<" not in dom  # not GenAI's
    assert f'href="#/experiments/{ui.experiment_id}/runs/{ui.train}"' in dom
    assert f">{TRAIN_NAME}<" in dom
    # the evaluation is counted but not a row of its own: it is nested, collapsed, under its training run
    assert "<strong>2</strong> matching runs" in dom and EVAL_NAME not in dom


def test_evaluation_page_shows_it_as_a_child_of_the_training_run(ui, tmp_path: Path) -> None:
    dom = _dom(f"{ui.base}/#/experiments/{ui.experiment_id}/runs/{ui.eval}?workflowType=machine_learning", tmp_path)
    assert EVAL_NAME in dom
    assert "Parent run" in dom
    assert f"runs/{ui.train}" in dom and TRAIN_NAME in dom  # the link to its parent, by id and name
