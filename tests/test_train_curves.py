"""TensorBoard event files per training segment, read back with TensorBoard's own reader."""

from __future__ import annotations

import pytest

from pythia_suite.train import curves

pytest.importorskip("tensorboard", reason="pip install tensorboard (pyproject.toml pins it)")


def _history(steps, scaled: bool):
    return [
        {
            "step": s,
            "loss": 10.0 - s,
            "lr": 1e-3 * s,
            "grad_norm": 0.5 + s,
            "tokens_per_s": 1000.0 + s,
            **({"loss_scale": 4096.0 / s} if scaled else {}),
        }
        for s in steps
    ]


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_each_segment_writes_its_steps_and_the_run_reads_as_one(tmp_path):
    log_dir = curves.run_log_dir(str(tmp_path / "results"), "pythia-0.4m")
    assert log_dir == tmp_path / "results" / "logs" / "train" / "pythia-0.4m"
    history = _history(range(1, 9), scaled=True)
    first = curves.write_segment_events(log_dir, history[:4], 0, 4)
    # A later segment's trainer state holds the whole history: only its own steps are written.
    second = curves.write_segment_events(log_dir, history, 4, 8)
    assert first != second and first.parent == second.parent == log_dir
    scalars = _scalars(log_dir)
    assert set(scalars) == set(curves.SCALARS.values())
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 9))
    assert scalars["train/loss"][0] == (1, pytest.approx(9.0))
    assert scalars["train/lr"][-1] == (8, pytest.approx(8e-3))
    assert scalars["train/loss_scale"][1] == (2, pytest.approx(2048.0))
    assert scalars["train/tokens_per_s"][3] == (4, pytest.approx(1004.0))
    assert curves.write_segment_events(log_dir, history, 8, 8) is None  # nothing new


def test_without_a_loss_scaler_there_is_no_loss_scale_curve(tmp_path):
    curves.write_segment_events(tmp_path, _history(range(1, 3), scaled=False), 0, 2)
    assert "train/loss_scale" not in _scalars(tmp_path)
