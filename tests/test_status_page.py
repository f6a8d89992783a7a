"""The progress page (results/status/index.html) opened in a real headless browser: Debian's
chromium takes a screenshot and dumps the rendered DOM, whose text is asserted.

scripts/test.sh installs chromium when run as root (CI). Elsewhere the test skips, naming the
package, unless CI=true, where a missing browser fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from status_fixture import build_tree, write_log

from pythia_suite import config as cfg
from pythia_suite import costs, layout, status
from pythia_suite.status_page import write_page

REPO = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser")


def _browser() -> str:
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    reason = "chromium not installed (as root: apt-get install -y chromium; scripts/test.sh does)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must have it")
    pytest.skip(reason)


def _chromium(browser: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    argv = [
        browser,
        "--headless",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={cwd / 'chromium-profile'}",
        *args,
    ]
    if os.geteuid() == 0:
        argv.insert(1, "--no-sandbox")  # chromium refuses to run as root with its sandbox
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_progress_page_in_headless_chromium(tmp_path, monkeypatch):
    browser = _browser()
    monkeypatch.chdir(tmp_path)
    config = cfg.load_config(
        [REPO / "config.yaml", REPO / "config/mini.yaml"],
        # One checkpoint per evaluation job, so the steps trained so far have evaluations.
        {
            "paths": {"results": "results", "state": "results/state"},
            "evaluation": {"steps_per_job": 1},
        },
    )
    costs.record_plan(config)
    build_tree(config, 0.7, tokens_per_s={"0.4m": 3000.0, "1.3m": 1200.0}, spike_every=3)
    write_log(
        config,
        "train",
        "pythia-1.3m",
        "step128",
        text="Traceback (most recent call last):\nRuntimeError: segment killed (OOM)\n",
    )
    st = status.collect_status(config, ask_slurm=False)
    page = write_page(st)
    assert page == Path(layout.status_page(st.results))
    html = page.read_text()
    # Self-contained: nothing to fetch, no scripts.
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", html)
    assert "<script" not in html

    shot = tmp_path / "page.png"
    run = _chromium(
        browser,
        f"--screenshot={shot}",
        "--window-size=1400,2400",
        page.resolve().as_uri(),
        cwd=tmp_path,
    )
    assert shot.is_file(), run.stderr[-3000:]
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 2400)
    # The charts rendered: strongly coloured pixels (the series; the page is otherwise grey).
    colourful = sum(1 for r, g, b in image.get_flattened_data() if max(r, g, b) - min(r, g, b) > 80)
    assert colourful > 2000, f"only {colourful} coloured pixels: charts not drawn"

    dom = _chromium(browser, "--dump-dom", page.resolve().as_uri(), cwd=tmp_path)
    assert dom.returncode == 0, dom.stderr[-3000:]
    text = re.sub(r"<[^>]+>", " ", dom.stdout)
    text = re.sub(r"\s+", " ", text)
    assert "pythia-suite progress" in text
    for run_name in cfg.expand_runs(config):
        assert run_name in text
    trained = round(len(cfg.checkpoint_steps(config)) * 0.7)
    assert f"{trained}/{len(cfg.checkpoint_steps(config))}" in text
    assert "failed train_segment" in text and "RuntimeError: segment killed (OOM)" in text
    assert "training loss" in text and "tokens/s per segment" in text
    # Evaluation charts of the checkpoints evaluated so far (the fixture's Pythia tasks).
    assert "lambada_openai acc (0-shot)" in text and "No checkpoint evaluated yet" not in text
    first = st.runs[0]
    assert 0 < first.evaluated < first.eval_planned  # some evaluated so far, not all
    assert "evaluated" in text and f"{first.evaluated}/{first.eval_planned}" in text
    assert "plan.json" in text
