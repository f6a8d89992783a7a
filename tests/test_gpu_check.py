"""benchmarks/gpu_check.py runs in its reduced CPU mode and prints every row of its table."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_reduced_gpu_check_prints_every_row_and_its_checks_pass(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert _gpu_check().main(["--reduced", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    payload = json.loads(out.read_text())
    assert "torch 2." in payload["environment"] and "transformers" in payload["environment"]
    assert "REDUCED" in payload["environment"]
    rows = {(r["check"], r["setting"].split(",")[0]): r for r in payload["rows"]}
    assert set(rows) == {
        ("410m throughput", "bf16"),
        ("410m peak memory", "bf16"),
        ("410m throughput", "fp16"),
        ("410m peak memory", "fp16"),
        ("1b peak memory", "bf16"),
        ("1.4b peak memory", "fp16"),
        ("fp16 overflow skip", "70m fp16"),
        ("70m cpu vs cpu", "fp32"),
        ("step1 == step0", "70m fp32"),
        ("6.9b tensor parallel 2", "bf16"),
    }
    tp2 = ("6.9b tensor parallel 2", "bf16")
    assert "fused AdamW" in rows[tp2]["setting"] and "gloo" in rows[tp2]["setting"]
    for key in (("fp16 overflow skip", "70m fp16"), ("70m cpu vs cpu", "fp32"), tp2):
        assert rows[key]["ok"] is True, rows[key]
    assert rows[("step1 == step0", "70m fp32")]["measured"] == "lr 0, weights bit-identical"
    assert "tokens/s" in rows[("410m throughput", "bf16")]["measured"]
    # No CUDA: the memory rows carry the plan's estimate and say the measurement is missing.
    assert rows[("1b peak memory", "bf16")]["measured"] == "n/a (cpu)"
    assert rows[("1b peak memory", "bf16")]["expected"].startswith("plan ")
    for row in payload["rows"]:
        assert f"| {row['check']}" in table
