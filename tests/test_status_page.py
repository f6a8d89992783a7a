"""The progress page (results/status/index.html) opened in a real headless browser: Debian's
chromium takes a screenshot and dumps the rendered DOM, whose text is asserted; a copy with a
measuring script reports what a reader sees in each chart (tick labels, the boxes of every text
element as laid out), so axis ranges and overlapping text are asserted, not guessed.

scripts/test.sh installs chromium when run as root (CI). Elsewhere the test skips, naming the
package, unless CI=true, where a missing browser fails.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from status_fixture import build_tree, write_log

from pythia_suite import config as cfg
from pythia_suite import costs, paths, status
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
    _add_mini_task_results(config)
    write_log(
        config,
        "train",
        "pythia-1.3m",
        "step128",
        text="Traceback (most recent call last):\nRuntimeError: segment killed (OOM)\n",
    )
    st = status.collect_status(config, ask_slurm=False)
    page = write_page(st)
    assert page == Path(paths.status_page(st.results))
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
    # A metric that never leaves 0 is stated, not drawn; identical metrics share one chart.
    assert "(not plotted): mini_lambada acc (0-shot)" in text
    assert "mini_next_word acc = acc_norm (0-shot)" in text

    charts = _measure_charts(browser, page, tmp_path)
    assert "mini_lambada acc (0-shot)" not in charts
    assert {
        "training loss",
        "tokens/s per segment",
        "mini_heldout word_perplexity (0-shot)",
    } <= set(charts)
    for title, chart in charts.items():
        low, high = _y_range(chart)
        # Every metric here is >= 0: no negative range (and so no clipped minus sign).
        assert low >= 0, (title, low, chart["yticks"])
        overlaps = _overlapping(chart["texts"])
        assert not overlaps, (title, overlaps)
        # Deduplicated runs dashed (the two deduped curves and their legend entries).
        assert chart["dashed_paths"] >= 4, (title, chart["dashed_paths"])
    ppl = charts["mini_heldout word_perplexity (0-shot)"]
    assert all(t["label"].startswith("$") for t in ppl["yticks"])  # a log axis: decades
    low, high = _y_range(ppl)
    assert low <= 200 < 3e6 <= high, (low, high)
    choice = charts["mini_next_word acc = acc_norm (0-shot)"]
    assert "chance 0.25" in [t["text"] for t in choice["texts"]]
    low, high = _y_range(choice)
    assert 0 <= low <= 0.25 and 0.45 <= high <= 0.5, (low, high)  # last: 0.25 + 0.6 x 32/96
    lambada = charts["mini_lambada ppl (0-shot)"]
    assert all(t["label"][-1] == "M" for t in lambada["yticks"]), lambada["yticks"]
    assert "1e6" not in [t["text"] for t in lambada["texts"]]  # no offset label over the axis
    low, high = _y_range(lambada)
    assert 0 <= low <= 9e6 - 6e4 * 32 * 2 and 9e6 <= high, (low, high)
    low, high = _y_range(charts["tokens/s per segment"])
    assert 0 <= low <= 1200 and 3000 <= high <= 3300, (low, high)  # both sizes' rates shown


def _add_mini_task_results(config: dict) -> None:
    """Give each evaluated checkpoint the miniature suite's tasks as they behave: perplexity
    falling over decades, next-word accuracy from chance (acc = acc_norm), and last-word exact
    match stuck at 0; and the tasks' manifest with chance 0.25."""
    results = config["paths"]["results"]
    for path in Path(results, "runs").rglob("*_step*.json"):
        doc = json.loads(path.read_text())
        step = int(path.stem.rsplit("_step", 1)[1])
        size = 2.0 if "1.3m" in path.name else 1.0
        acc = 0.25 + 0.3 * size * step / (step + 64)
        doc["results"] = {
            "lambada_openai": doc["results"]["lambada_openai"],
            "mini_heldout": {"word_perplexity": 3e6 / (1 + step) ** (1.5 * size) + 200},
            "mini_next_word": {"acc": acc, "acc_stderr": 0.02, "acc_norm": acc},
            "mini_lambada": {"acc": 0.0, "acc_stderr": 0.0, "ppl": 9e6 - 6e4 * step * size},
        }
        path.write_text(json.dumps(doc))
    tasks = Path(paths.eval_tasks_dir(results))
    tasks.mkdir(parents=True, exist_ok=True)
    chance = {"mini_next_word": {"acc": 0.25, "acc_norm": 0.25}}
    (tasks / "manifest.json").write_text(json.dumps({"chance": chance}))


# Runs in the page as laid out: per chart (its aria-label), the y tick labels (the source of a
# mathtext label is the comment matplotlib writes beside it), every text element's box and
# the count of dashed paths.
_MEASURE = """<script>
const charts = {};
for (const svg of document.querySelectorAll("figure svg")) {
  const texts = [...svg.querySelectorAll("text")].map(t => {
    const b = t.getBoundingClientRect();
    const text = t.textContent.replace(/\\s+/g, " ").trim();
    return {text, x: b.left, y: b.top, w: b.width, h: b.height};
  });
  const labelled = [...svg.querySelectorAll('g[id^="ytick"]')].filter(
    tick => tick.querySelector('g[id^="text"]') && tick.querySelector("use"));
  const yticks = labelled.map(tick => {
    const label = tick.querySelector('g[id^="text"]');
    const note = [...label.childNodes].find(n => n.nodeType === Node.COMMENT_NODE);
    return {
      label: note ? note.textContent.trim() : label.textContent.replace(/\\s+/g, ""),
      y: parseFloat(tick.querySelector("use").getAttribute("y")),
    };
  });
  const frame = svg.querySelector('g[id="patch_2"] path').getAttribute("d");
  const ys = [...frame.matchAll(/[-\\d.]+ ([-\\d.]+)/g)].map(m => parseFloat(m[1]));
  const dashed = [...svg.querySelectorAll("path")].filter(
    p => (p.getAttribute("style") || "").includes("stroke-dasharray")).length;
  charts[svg.getAttribute("aria-label")] = {
    texts, yticks, dashed_paths: dashed, frame: [Math.min(...ys), Math.max(...ys)],
  };
}
const out = document.createElement("pre");
out.id = "measured";
out.textContent = JSON.stringify(charts);
document.body.appendChild(out);
</script>"""


def _measure_charts(browser: str, page: Path, tmp_path: Path) -> dict:
    measured = tmp_path / "measured.html"
    measured.write_text(page.read_text().replace("</body>", _MEASURE + "</body>"))
    dom = _chromium(
        browser, "--window-size=1400,2400", "--dump-dom", measured.as_uri(), cwd=tmp_path
    )
    assert dom.returncode == 0, dom.stderr[-3000:]
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stdout[-2000:]
    return json.loads(html_unescape(found[1]))


def html_unescape(text: str) -> str:
    import html

    return html.unescape(text)


def _y_range(chart: dict) -> tuple[float, float]:
    """The values at the bottom and top of a chart's y axis, from where its tick labels sit
    (linear, or logarithmic when the labels are powers of ten)."""
    ticks = sorted((t["y"], _tick_value(t["label"])) for t in chart["yticks"])
    assert len(ticks) >= 2, chart["yticks"]
    log = all(t["label"].startswith("$") for t in chart["yticks"])
    (y0, v0), (y1, v1) = ticks[0], ticks[-1]
    if log:
        v0, v1 = math.log10(v0), math.log10(v1)
    slope = (v1 - v0) / (y1 - y0)
    top, bottom = (v0 + slope * (y - y0) for y in chart["frame"])
    return (10**bottom, 10**top) if log else (bottom, top)


def _tick_value(label: str) -> float:
    """A tick label's number: plain ('0.25', with matplotlib's U+2212 minus) or mathtext
    ('$\\mathdefault{10^{5}}$', '$\\mathdefault{2\\times10^{5}}$')."""
    label = label.replace("\u2212", "-")
    if math_text := re.fullmatch(r"\$\\mathdefault\{(.*)\}\$", label):
        body = math_text[1]
        power = re.fullmatch(r"(?:([\d.]+)\\times)?10\^\{(-?\d+)\}", body)
        assert power, label
        return float(power[1] or 1) * 10.0 ** int(power[2])
    scale = {"K": 1e3, "M": 1e6, "B": 1e9}.get(label[-1:], 1.0)  # units.count's suffixes
    return float(label.rstrip("KMB")) * scale


def _overlapping(texts: list[dict]) -> list[tuple[str, str]]:
    """Pairs of non-empty text elements whose laid-out boxes overlap by more than 1 px²."""
    boxes = [t for t in texts if t["text"] and t["w"] > 0 and t["h"] > 0]
    pairs = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            dx = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
            dy = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
            if dx > 0 and dy > 0 and dx * dy > 1:
                pairs.append((a["text"], b["text"]))
    return pairs
