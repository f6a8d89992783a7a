"""One process: what a segment computes, writes and refuses."""

from __future__ import annotations

import hashlib
import io
import json
from collections import namedtuple

import numpy as np
import pytest
import torch
from train_support import (
    TINY_CONFIG,
    RandomTokens,
    assert_weights_close,
    read_weights,
    tiny_settings,
)

from pythia_suite.data.order import fingerprint, fingerprint_steps
from pythia_suite.train import checkpoint as ckpt
from pythia_suite.train.loop import train_segment
from pythia_suite.train.optim import lr_at
from pythia_suite.train.step import NonFiniteLossError

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _segment(tmp_path, start, a, b, settings=None, samples=None, **kw):
    start_dir = None if start is None else tmp_path / "ckpt" / f"step{start}"
    return train_segment(
        TINY_CONFIG,
        settings or tiny_settings(),
        samples or RandomTokens(),
        start_checkpoint=start_dir,
        start_step=a,
        end_step=b,
        out_dir=tmp_path / "ckpt" / f"step{b}",
        log=io.StringIO(),
        **kw,
    )


def test_step0_checkpoint_layout_and_first_update_has_lr_zero(tmp_path):
    state0 = _segment(tmp_path, None, 0, 0)
    step0 = tmp_path / "ckpt" / "step0"
    assert sorted(p.name for p in step0.iterdir()) == [
        "hf_config.json",
        "model.safetensors",
        "optimizer",
        "segment_summary.json",
        "trainer_state.json",
    ]
    assert json.loads((step0 / "hf_config.json").read_text()) == TINY_CONFIG
    assert state0["step"] == 0 and state0["losses"] == []
    assert not list(tmp_path.joinpath("ckpt").glob(".*partial"))

    state1 = _segment(tmp_path, 0, 0, 1)
    w0, w1 = read_weights(step0), read_weights(tmp_path / "ckpt" / "step1")
    assert state1["history"][0]["lr"] == 0.0
    # LR 0 (warmup from 0) and AdamW's decoupled decay scaled by LR: step1 == step0 exactly.
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert state1["scheduler"]["iteration"] == 1


def test_trainer_state_records_losses_lr_and_data_fingerprints(tmp_path):
    samples = RandomTokens()
    settings = tiny_settings()
    _segment(tmp_path, None, 0, 0)
    state = _segment(tmp_path, 0, 0, 4, settings=settings, samples=samples)
    on_disk = json.loads((tmp_path / "ckpt" / "step4" / "trainer_state.json").read_text())
    assert on_disk["step"] == 4 and on_disk["consumed_samples"] == 32
    assert on_disk["world_size"] == 1 and on_disk["segment"] == {"start_step": 0, "end_step": 4}
    assert len(on_disk["losses"]) == 4 and all(np.isfinite(on_disk["losses"]))
    assert [r["lr"] for r in on_disk["history"]] == [
        lr_at(i, lr=1e-2, min_lr=1e-3, warmup_iters=2, decay_iters=20) for i in range(4)
    ]
    batches = [samples.batch(s, 8) for s in range(4)]
    assert on_disk["data_fingerprint"]["steps"] == {
        str(s): hashlib.sha256(b.astype("<i8").tobytes()).hexdigest() for s, b in enumerate(batches)
    }
    whole = hashlib.sha256(b"".join(b.astype("<i8").tobytes() for b in batches)).hexdigest()
    assert on_disk["data_fingerprint"]["segment"] == whole
    # The one data-order fingerprint (data.order's) is what the trainer records, step and segment.
    assert on_disk["data_fingerprint"]["steps"] == {
        str(s): fingerprint(b) for s, b in enumerate(batches)
    }
    assert whole == fingerprint(batches) == fingerprint_steps(samples, 0, 4, 8)
    assert on_disk["tokens_per_s"] > 0 and "rng" in on_disk
    assert state["losses"] == on_disk["losses"]
    # The model learns the synthetic sequences.
    longer = _segment(tmp_path, 4, 4, 12, settings=settings, samples=samples)
    assert longer["losses"][-1] < on_disk["losses"][0] - 0.3
    assert longer["history"][0]["iteration"] == 4


def test_gradient_accumulation_gives_the_same_losses(tmp_path):
    _segment(tmp_path, None, 0, 0)
    one = _segment(tmp_path / "a", None, 0, 3, settings=tiny_settings(micro_batch=8))
    two = _segment(tmp_path / "b", None, 0, 3, settings=tiny_settings(micro_batch=2))
    np.testing.assert_allclose(one["losses"], two["losses"], rtol=1e-5)
    wa, wb = read_weights(tmp_path / "a/ckpt/step3"), read_weights(tmp_path / "b/ckpt/step3")
    assert_weights_close(wa, wb)


def test_nan_loss_stops_with_the_step_and_writes_nothing(tmp_path, monkeypatch):
    _segment(tmp_path, None, 0, 0)
    real_ce = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real_ce(*args, **kwargs)
        # micro_batch 4 of 8: two micro-steps per iteration; poison iteration 2.
        return loss * float("nan") if calls["n"] in (5, 6) else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", poisoned)
    state_dir = tmp_path / "state"
    with pytest.raises(NonFiniteLossError, match="iteration 2 .*step 3"):
        _segment(tmp_path, 0, 0, 5, state_dir=state_dir, settings=tiny_settings(state_interval=2))
    assert not (tmp_path / "ckpt" / "step5").exists()
    assert not list((tmp_path / "ckpt").glob(".step5*"))
    # Only the snapshot taken before the NaN (step 2) exists; nothing for step 3.
    assert sorted(p.name for p in state_dir.iterdir()) == ["lock", "snapshot-step2"]


def test_spikes_are_logged_and_recorded(tmp_path, monkeypatch):
    real_ce = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def spiky(*args, **kwargs):
        calls["n"] += 1
        loss = real_ce(*args, **kwargs)
        # Two micro-steps per iteration: iteration 11 (the update to step 12) triples its loss.
        return loss * 3 if calls["n"] in (23, 24) else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spiky)
    log = io.StringIO()
    settings = tiny_settings(spike_factor=2.0, spike_window=8)
    state = train_segment(
        TINY_CONFIG,
        settings,
        RandomTokens(),
        start_checkpoint=None,
        start_step=0,
        end_step=13,
        out_dir=tmp_path / "step13",
        log=log,
    )
    assert [s["step"] for s in state["spikes"]] == [12]
    assert "SPIKE step 12" in log.getvalue()
    spike = state["spikes"][0]
    assert spike["loss"] > 2.0 * spike["running_mean"]
    assert spike["running_mean"] == pytest.approx(np.mean(state["losses"][3:11]))
    saved = json.loads((tmp_path / "step13" / "trainer_state.json").read_text())
    assert saved["spikes"] == state["spikes"]
    assert len(saved["recent_losses"]) == 8  # the window carries into the next segment


def test_log_lines_carry_step_loss_lr_grad_norm_throughput_eta(tmp_path):
    log = tmp_path / "train.log"
    train_segment(
        TINY_CONFIG,
        tiny_settings(log_interval=2),
        RandomTokens(),
        start_checkpoint=None,
        start_step=0,
        end_step=4,
        out_dir=tmp_path / "step4",
        log=log,
    )
    lines = [line for line in log.read_text().splitlines() if line.startswith("step ")]
    assert [line.split(" |")[0] for line in lines] == ["step 2/4", "step 4/4"]
    for field in ("loss", "lr", "grad_norm", "tokens/s", "eta"):
        assert f"| {field} " in lines[0]


def test_lock_refuses_a_second_writer(tmp_path):
    state_dir = tmp_path / "state"
    with ckpt.state_dir_lock(state_dir):
        with pytest.raises(ckpt.StateDirLockedError, match=r"lock is held by .*\"pid\""):
            _segment(tmp_path, None, 0, 2, state_dir=state_dir)
    assert not (tmp_path / "ckpt" / "step2").exists()
    _segment(tmp_path, None, 0, 2, state_dir=state_dir)  # free again
    assert (tmp_path / "ckpt" / "step2").is_dir()


def test_free_space_check_names_path_and_sizes(tmp_path, monkeypatch):
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: Usage(10**9, 10**9, 1000))
    # The tiny model has 33,664 parameters: 16 bytes each.
    expected = r"under .*ckpt: need .*\(538624 bytes\).*\(1000 bytes\) free"
    with pytest.raises(ckpt.InsufficientDiskSpaceError, match=expected):
        _segment(tmp_path, None, 0, 1)
    assert not (tmp_path / "ckpt" / "step1").exists()


def test_start_checkpoint_must_match_config_and_step(tmp_path):
    _segment(tmp_path, None, 0, 0)
    other = dict(TINY_CONFIG, layer_norm_eps=1e-6)
    with pytest.raises(ckpt.CheckpointError, match="hf_config.json: key 'layer_norm_eps'"):
        train_segment(
            other,
            tiny_settings(),
            RandomTokens(),
            start_checkpoint=tmp_path / "ckpt/step0",
            start_step=0,
            end_step=1,
            out_dir=tmp_path / "x",
            log=io.StringIO(),
        )
    with pytest.raises(ckpt.CheckpointError, match="key 'step' is 0, expected start_step 5"):
        _segment(tmp_path, 0, 5, 6)
    with pytest.raises(FileExistsError, match="step0 already exists"):
        _segment(tmp_path, None, 0, 0)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="global_batch 8 is not a multiple of .* micro_batch 3"):
        train_segment(
            TINY_CONFIG,
            tiny_settings(micro_batch=3),
            RandomTokens(),
            start_checkpoint=None,
            start_step=0,
            end_step=1,
            out_dir="/nonexistent/x",
        )
    with pytest.raises(ValueError, match="precision 'fp16' needs a CUDA device"):
        train_segment(
            TINY_CONFIG,
            tiny_settings(precision="fp16"),
            RandomTokens(),
            start_checkpoint=None,
            start_step=0,
            end_step=1,
            out_dir="/nonexistent/x",
            device="cpu",
        )
    with pytest.raises(ValueError, match="TrainSettings.init_method"):
        tiny_settings(init_method="xavier").validate()


def test_bf16_autocast_runs_on_cpu(tmp_path):
    state = train_segment(
        TINY_CONFIG,
        tiny_settings(precision="bf16"),
        RandomTokens(),
        start_checkpoint=None,
        start_step=0,
        end_step=3,
        out_dir=tmp_path / "step3",
        log=io.StringIO(),
    )
    assert all(np.isfinite(state["losses"])) and state["loss_scaler"] is None
    # Master weights stay fp32 whatever the compute precision.
    assert all(t.dtype == torch.float32 for t in read_weights(tmp_path / "step3").values())
