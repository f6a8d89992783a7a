"""One training step and what it is made of: activation checkpointing, the chunked loss, the
fp16 overflow skip, and the pieces the parallel and memory code call (prepare_model,
init_train_state, train_step)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from train_support import SEQ, TINY_CONFIG, RandomTokens, read_weights, tiny_settings

from pythia_suite.train.distributed import DistributedEnv
from pythia_suite.train.loop import train_segment
from pythia_suite.train.loss import chunked_cross_entropy, forward_loss
from pythia_suite.train.model import init_gpt_neox_weights
from pythia_suite.train.step import attention_kernel, init_train_state, prepare_model, train_step

SINGLE = DistributedEnv(0, 1, 0, "127.0.0.1", 0, "single")
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _segment(root, end, settings, samples=None, log=None, **kw):
    return train_segment(
        TINY_CONFIG,
        settings,
        samples or RandomTokens(),
        start_checkpoint=None,
        start_step=0,
        end_step=end,
        out_dir=root / f"step{end}",
        log=log or io.StringIO(),
        **kw,
    )


def _fresh_state(**overrides):
    settings = tiny_settings(**overrides)
    model = prepare_model(TINY_CONFIG, settings, CPU)
    init_gpt_neox_weights(model, weight_seed=1234)
    return init_train_state(model, settings, SINGLE, CPU)


# ----------------------------------------------------------------------------- the loss


def test_chunked_cross_entropy_equals_the_plain_loss_and_its_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float32, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float32, requires_grad=True)
    labels = torch.randint(0, 50, (37,))
    plain = F.cross_entropy(hidden @ weight.t(), labels)
    g_hidden, g_weight = torch.autograd.grad(plain * 3.0, (hidden, weight))
    for chunk in (1, 5, 36, 37, 100):  # uneven, single-row, exact and oversized chunks
        chunked = chunked_cross_entropy(hidden, weight, labels, chunk)
        c_hidden, c_weight = torch.autograd.grad(chunked * 3.0, (hidden, weight))
        torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(c_hidden, g_hidden, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(c_weight, g_weight, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunked_cross_entropy(hidden, weight, labels, 0)


def test_chunked_cross_entropy_under_autocast_matches_the_plain_loss():
    torch.manual_seed(1)
    hidden = torch.randn(40, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    labels = torch.randint(0, 50, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.cross_entropy((hidden @ weight.t()).float(), labels)
        chunked = chunked_cross_entropy(hidden, weight, labels, 16)
    assert chunked.dtype == torch.float32
    expected = torch.autograd.grad(plain, (hidden, weight))
    got = torch.autograd.grad(chunked, (hidden, weight))
    torch.testing.assert_close(chunked, plain, rtol=1e-3, atol=1e-3)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, e, rtol=2e-2, atol=2e-3)


def test_forward_loss_chunked_equals_transformers_logits_loss():
    settings = tiny_settings()
    model = prepare_model(TINY_CONFIG, settings, CPU)
    init_gpt_neox_weights(model, weight_seed=7)
    tokens = torch.from_numpy(RandomTokens().batch(0, 4))
    reference = F.cross_entropy(
        model(input_ids=tokens[:, :-1]).logits.flatten(0, 1), tokens[:, 1:].flatten()
    )
    ref_grads = torch.autograd.grad(reference, list(model.parameters()))
    for chunk in (10**6, 7):  # one piece (plain) and 10 uneven chunks of the 64 tokens
        loss = forward_loss(model, tokens, tiny_settings(loss_chunk_tokens=chunk))
        grads = torch.autograd.grad(loss, list(model.parameters()))
        torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)
        for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads, strict=True):
            torch.testing.assert_close(
                g, r, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}"
            )


def test_chunked_loss_trains_like_the_plain_loss(tmp_path):
    plain = _segment(tmp_path / "plain", 4, tiny_settings())
    chunked = _segment(tmp_path / "chunked", 4, tiny_settings(loss_chunk_tokens=24))
    np.testing.assert_allclose(chunked["losses"], plain["losses"], rtol=1e-5)
    a, b = read_weights(tmp_path / "plain/step4"), read_weights(tmp_path / "chunked/step4")
    for key in a:
        if not key.endswith("query_key_value.bias"):  # gradient is rounding noise (see support)
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- checkpointing


def test_activation_checkpointing_gives_the_same_losses_and_weights(tmp_path):
    off = _segment(tmp_path / "off", 5, tiny_settings())
    on = _segment(tmp_path / "on", 5, tiny_settings(activation_checkpointing=True))
    np.testing.assert_allclose(on["losses"], off["losses"], rtol=1e-5)
    a, b = read_weights(tmp_path / "off/step5"), read_weights(tmp_path / "on/step5")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-7)


def test_prepare_model_checkpoints_every_layer_only_when_asked():
    on = prepare_model(TINY_CONFIG, tiny_settings(activation_checkpointing=True), CPU)
    off = prepare_model(TINY_CONFIG, tiny_settings(), CPU)
    assert all(layer.gradient_checkpointing for layer in on.base_model.layers)
    assert not any(layer.gradient_checkpointing for layer in off.base_model.layers)
    # Same parameter names either way: checkpoints stay interchangeable.
    assert [n for n, _ in on.named_parameters()] == [n for n, _ in off.named_parameters()]


def test_activation_checkpointing_recomputes_in_backward():
    """Counted, not assumed: with checkpointing every layer runs again in the backward pass."""
    calls = {"on": 0, "off": 0}

    def count(mode):
        return lambda *args: calls.__setitem__(mode, calls[mode] + 1)

    for mode in ("off", "on"):
        state = _fresh_state(activation_checkpointing=mode == "on")
        for layer in state.model.base_model.layers:
            layer.input_layernorm.register_forward_pre_hook(count(mode))
        train_step(state, torch.from_numpy(RandomTokens().batch(0, 8)))
    layers, micro_steps = TINY_CONFIG["num_hidden_layers"], 2
    assert calls == {"off": layers * micro_steps, "on": 2 * layers * micro_steps}


# ----------------------------------------------------------------------------- one step


def test_train_step_is_one_update_on_given_tokens():
    state = _fresh_state()
    before = {n: p.detach().clone() for n, p in state.model.named_parameters()}
    tokens = torch.from_numpy(RandomTokens().batch(0, 8))
    first = train_step(state, tokens)
    # Warmup from LR 0: the first update changes nothing, but counts on the schedule.
    assert first.lr == 0.0 and not first.skipped and not first.stop_requested
    assert np.isfinite(first.loss) and first.grad_norm > 0
    assert state.progress.scheduler_iteration == 1
    assert all(torch.equal(p, before[n]) for n, p in state.model.named_parameters())
    second = train_step(state, tokens, stop_requested=True)
    assert second.lr > 0 and second.stop_requested
    assert not torch.equal(
        state.model.base_model.embed_in.weight, before["gpt_neox.embed_in.weight"]
    )
    assert all(p.grad is None for p in state.model.parameters())


def test_compile_layers_compiles_each_layer_in_place():
    model = prepare_model(TINY_CONFIG, tiny_settings(compile_layers=True), CPU)
    assert all(layer._compiled_call_impl is not None for layer in model.base_model.layers)
    plain = prepare_model(TINY_CONFIG, tiny_settings(), CPU)
    assert all(layer._compiled_call_impl is None for layer in plain.base_model.layers)


# ----------------------------------------------------------------------------- fast paths


def test_attention_runs_sdpa_without_a_mask_so_flash_is_eligible():
    model = prepare_model(TINY_CONFIG, tiny_settings(), CPU)
    assert model.config._attn_implementation == "sdpa"
    masks = []
    for layer in model.base_model.layers:
        layer.attention.register_forward_pre_hook(
            lambda mod, args, kwargs: masks.append(kwargs.get("attention_mask")), with_kwargs=True
        )
    model(input_ids=torch.zeros(2, 8, dtype=torch.long))
    # No materialised mask: causal by is_causal, which the flash kernel needs.
    assert masks == [None] * TINY_CONFIG["num_hidden_layers"]
    assert attention_kernel(model, tiny_settings(), CPU).startswith("SDPA ")


def test_attention_kernel_names_the_fallback_and_why(monkeypatch):
    model = prepare_model(TINY_CONFIG, tiny_settings(), CPU)
    real = F.scaled_dot_product_attention

    def no_flash(*args, **kwargs):
        from torch.nn.attention import SDPBackend, _cur_sdpa_kernel_backends

        if _cur_sdpa_kernel_backends() == [SDPBackend.FLASH_ATTENTION]:
            raise RuntimeError("No available kernel. Aborting execution.\nmore")
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", no_flash)
    found = attention_kernel(model, tiny_settings(), CPU)
    assert found.startswith("SDPA ") and "FLASH_ATTENTION" not in found.split(";")[0]
    assert "refused: FLASH_ATTENTION: No available kernel. Aborting execution." in found


def test_rotary_runs_in_the_compute_dtype_under_autocast_only():
    model = prepare_model(TINY_CONFIG, tiny_settings(), CPU)
    init_gpt_neox_weights(model, weight_seed=3)
    seen = []
    model.base_model.rotary_emb.register_forward_hook(lambda m, a, out: seen.append(out[0].dtype))
    tokens = torch.from_numpy(RandomTokens().batch(0, 2))
    fp32 = forward_loss(model, tokens, tiny_settings())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = forward_loss(model, tokens, tiny_settings())
    assert seen == [torch.float32, torch.bfloat16]
    # bf16 end to end stays close to fp32 (the rotary values are rounded, not the angles).
    torch.testing.assert_close(bf16, fp32, rtol=2e-2, atol=0)


def test_device_choices_come_from_the_device_once_and_the_cpu_can_set_fused_adamw():
    from pythia_suite.train.device import device_choices

    gpu = torch.device("cuda", 1)
    cuda = device_choices(gpu)
    assert (cuda.fused_adamw, cuda.pin_memory, cuda.bind_device, cuda.gpu_summary) == (True,) * 4
    assert (cuda.backend, cuda.ddp_device_ids) == ("nccl", (gpu,))
    assert cuda.fp16_compute and cuda.expects_flash_attention
    cpu = device_choices("cpu")
    assert (cpu.fused_adamw, cpu.pin_memory, cpu.bind_device, cpu.gpu_summary) == (False,) * 4
    assert (cpu.backend, cpu.ddp_device_ids) == ("gloo", None)
    assert not cpu.fp16_compute and not cpu.expects_flash_attention
    with pytest.raises(TypeError, match="fused"):
        device_choices("cpu", fused=True)
    # The choice reaches the optimizer the loop builds: fused on request, else torch's default.
    settings = tiny_settings()
    model = prepare_model(TINY_CONFIG, settings, CPU)
    init_gpt_neox_weights(model, weight_seed=1234)
    fused = init_train_state(
        model, settings, SINGLE, CPU, choices=device_choices(CPU, fused_adamw=True)
    )
    assert all(g["fused"] is True for g in fused.optimizer.param_groups)
    assert all(g["fused"] is None for g in _fresh_state().optimizer.param_groups)


def test_fused_adamw_is_the_same_update():
    from pythia_suite.train.optim import build_optimizer
    from pythia_suite.train.parallel import build_parallelism

    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(4, 3))
        opt = build_optimizer(
            [{"params": [w], "weight_decay": 0.1}],
            build_parallelism(1, 1, CPU),
            betas=(0.9, 0.95),
            eps=1e-8,
            # As build_training_optimizer asks: fused only where wanted, torch's default else.
            **({"fused": True} if fused else {}),
        )
        assert opt.param_groups[0]["fused"] is (True if fused else None)
        for group in opt.param_groups:
            group["lr"] = 1e-2
        for _ in range(3):
            (w**2).sum().backward()
            opt.step()
            opt.zero_grad()
        results.append(w.detach().clone())
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- fp16 overflow skip


def _poison_iterations(monkeypatch, iterations, micro_steps=2):
    """Make the loss inf at the given iterations (0-based calls of train_step): an overflow as
    fp16 gives one, injected where the loss is computed; the gradients become inf/NaN."""
    real_ce = F.cross_entropy
    calls = {"n": 0}

    def overflowing(*args, **kwargs):
        loss = real_ce(*args, **kwargs)
        iteration = calls["n"] // micro_steps
        calls["n"] += 1
        return loss * float("inf") if iteration in iterations else loss

    monkeypatch.setattr(F, "cross_entropy", overflowing)


def test_overflow_skips_the_step_keeps_weights_and_schedule_halves_scale_after_hysteresis(
    monkeypatch,
):
    # fp32 compute with fp16's dynamic loss scaler (window 1000, hysteresis 2): the skip path.
    state = _fresh_state(loss_scaler_in_fp32=True, loss_scale_initial=2.0**12)
    tokens = torch.from_numpy(RandomTokens().batch(0, 8))
    _poison_iterations(monkeypatch, {2, 3})
    results, snapshots = [], []
    for _ in range(5):
        snapshots.append(
            (
                {n: p.detach().clone() for n, p in state.model.named_parameters()},
                state.progress.scheduler_iteration,
                state.scaler.scale,
            )
        )
        results.append(train_step(state, tokens))
        state.progress.step += 1  # what the loop's record does
    assert [r.skipped for r in results] == [False, False, True, True, False]
    # A skipped step leaves every weight and the optimizer's moments as they were...
    for i in (2, 3):
        before, after = snapshots[i][0], snapshots[i + 1][0]
        assert all(torch.equal(before[n], after[n]) for n in before)
    assert not all(torch.equal(snapshots[4][0][n], snapshots[1][0][n]) for n in snapshots[1][0])
    # ...and does not advance the LR schedule: the next good step gets the LR the skip had.
    assert [s[1] for s in snapshots] == [0, 1, 2, 2, 2]
    assert results[2].lr == results[3].lr == results[4].lr > results[1].lr
    assert state.progress.scheduler_iteration == 3
    # Hysteresis 2: the first overflow only uses up the hysteresis, the second halves the scale.
    assert [s[2] for s in snapshots] == [4096.0, 4096.0, 4096.0, 4096.0, 2048.0]
    assert state.scaler.scale == 2048.0
    assert not np.isfinite(results[2].loss)


def test_overflow_without_a_loss_scaler_stops(monkeypatch):
    from pythia_suite.train.step import NonFiniteLossError

    state = _fresh_state()
    _poison_iterations(monkeypatch, {0})
    with pytest.raises(NonFiniteLossError, match="loss is not finite at iteration 0"):
        train_step(state, torch.from_numpy(RandomTokens().batch(0, 8)))


def test_loss_scaler_in_fp32_trains_exactly_like_no_scaler_and_records_skips(tmp_path, monkeypatch):
    plain = _segment(tmp_path / "plain", 4, tiny_settings())
    # Scaling by 2^12 and unscaling are exact in fp32: the same numbers, bit for bit.
    scaled = _segment(tmp_path / "scaled", 4, tiny_settings(loss_scaler_in_fp32=True))
    assert scaled["losses"] == plain["losses"]
    a, b = read_weights(tmp_path / "plain/step4"), read_weights(tmp_path / "scaled/step4")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert scaled["loss_scaler"]["cur_scale"] == 4096.0 and plain["loss_scaler"] is None

    _poison_iterations(monkeypatch, {1})
    log = io.StringIO()
    skipped = _segment(tmp_path / "skip", 4, tiny_settings(loss_scaler_in_fp32=True), log=log)
    assert [r["skipped"] for r in skipped["history"]] == [False, True, False, False]
    # The scale after each step, for the TensorBoard curves (hysteresis 2: one overflow keeps it).
    assert [r["loss_scale"] for r in skipped["history"]] == [4096.0] * 4
    assert all("loss_scale" not in r for r in plain["history"])
    assert skipped["scheduler"]["iteration"] == 3  # 4 iterations, one skipped
    assert skipped["loss_scaler"]["cur_hysteresis"] == 1
    assert "loss_scale 4096" in log.getvalue()
    # The skipped loss does not enter the spike detector's window.
    assert len(skipped["recent_losses"]) == 3 and all(np.isfinite(skipped["recent_losses"]))


# ----------------------------------------------------------------------------- summary record

SUMMARY_KEYS = {
    "format", "run", "size", "start_step", "end_step", "steps", "skipped_steps", "tokens",
    "tokens_per_s", "flops_per_token", "mfu", "peak_tflops", "device_kind", "device_name",
    "devices", "nodes", "data_parallel", "tensor_parallel", "micro_batch", "gas", "precision",
    "wall_s", "train_time_s", "device_hours", "losses", "spikes", "nan_abort", "started_at",
    "finished_at", "slurm_job_id", "hosts",
}  # fmt: skip


def _read_summary(checkpoint):
    import json

    from pythia_suite.train.summary import SEGMENT_SUMMARY_NAME

    return json.loads((checkpoint / SEGMENT_SUMMARY_NAME).read_text())


def test_segment_summary_is_written_inside_the_checkpoint_with_its_values(tmp_path, monkeypatch):
    import datetime
    import socket

    from pythia_suite.config import transformer_flops_per_token
    from pythia_suite.train.loop import RunInfo

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    _poison_iterations(monkeypatch, {2})
    info = RunInfo(run="pythia-tiny", size="tiny", gpu_peak_tflops=312.0)
    settings = tiny_settings(loss_scaler_in_fp32=True)
    t0 = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    state = _segment(tmp_path, 5, settings, run_info=info)
    summary = _read_summary(tmp_path / "step5")
    assert set(summary) == SUMMARY_KEYS
    history = state["history"]
    good = [r["loss"] for r in history if not r["skipped"]]
    expected_flops = transformer_flops_per_token(
        layers=2, hidden=32, intermediate=128, seq_length=16, vocab=128
    )
    assert expected_flops == 6 * (2 * (4 * 32 * 32 + 2 * 32 * 128) + 128 * 32) + 12 * 2 * 16 * 32
    assert summary | {"tokens_per_s": None, "wall_s": None, "train_time_s": None} == summary | {
        "format": "pythia-suite/segment-summary/1",
        "run": "pythia-tiny",
        "size": "tiny",
        "start_step": 0,
        "end_step": 5,
        "steps": 5,
        "skipped_steps": 1,
        "tokens": 5 * 8 * 16,
        "tokens_per_s": None,
        "flops_per_token": float(expected_flops),
        "mfu": None,  # CPU: no peak, whatever the GPU record says
        "peak_tflops": None,
        "device_kind": "cpu",
        "devices": 1,
        "nodes": 1,
        "data_parallel": 1,
        "tensor_parallel": 1,
        "micro_batch": 4,
        "gas": 2,
        "precision": "fp32",
        "wall_s": None,
        "train_time_s": None,
        "losses": {
            "first": good[0],
            "last": good[-1],
            "min": min(good),
            "max": max(good),
            "mean": sum(good) / len(good),
        },
        "spikes": [],
        "nan_abort": False,
        "slurm_job_id": "4242",
        "hosts": [socket.gethostname()],
    }
    assert summary["train_time_s"] == pytest.approx(state["train_time_s"])
    assert summary["tokens_per_s"] == pytest.approx(summary["tokens"] / summary["train_time_s"])
    assert summary["wall_s"] >= summary["train_time_s"] > 0
    assert summary["device_hours"] == pytest.approx(summary["wall_s"] / 3600)
    started = datetime.datetime.fromisoformat(summary["started_at"])
    finished = datetime.datetime.fromisoformat(summary["finished_at"])
    assert t0 <= started <= finished <= datetime.datetime.now(datetime.UTC)
    assert summary["device_name"]


def test_segment_summary_of_a_resumed_segment_counts_the_whole_segment(tmp_path):
    settings = tiny_settings(state_interval=2)

    def stop_at_3(event, step):
        if event == "step_end" and step == 3:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        _segment(tmp_path, 5, settings, state_dir=tmp_path / "state", hook=stop_at_3)
    assert not (tmp_path / "step5").exists()
    _segment(tmp_path, 5, settings, state_dir=tmp_path / "state")
    summary = _read_summary(tmp_path / "step5")
    assert (summary["steps"], summary["tokens"], summary["skipped_steps"]) == (5, 5 * 8 * 16, 0)
    assert summary["losses"]["first"] is not None


def test_step0_summary_has_no_steps(tmp_path):
    _segment(tmp_path, 0, tiny_settings())
    summary = _read_summary(tmp_path / "step0")
    assert (summary["steps"], summary["tokens"], summary["tokens_per_s"]) == (0, 0, None)
    assert summary["losses"] == dict.fromkeys(("first", "last", "min", "max", "mean"))


def test_mfu_uses_the_gpu_peak_on_cuda_only():
    """The CUDA branch's arithmetic, with a CPU state dressed as a CUDA one."""
    from pythia_suite.train.device import device_choices
    from pythia_suite.train.loop import RunInfo, Segment, segment_summary
    from pythia_suite.train.step import Progress

    state = _fresh_state()
    state.progress = Progress(
        start_step=0, end_step=2, segment_key="k", step=2, train_time_s=2.0,
        history=[{"loss": 3.0, "skipped": False}, {"loss": 2.0, "skipped": False}],
    )  # fmt: skip
    seg = Segment(
        hf_config=TINY_CONFIG, samples=RandomTokens(), start_step=0, end_step=2,
        out_dir=None, state_dir=None, hook=None, log=None, preempt=None, batches=None,
        fingerprints=None, run_info=RunInfo("r", "s", gpu_peak_tflops=1e-6),
    )  # fmt: skip
    cpu = segment_summary(seg, state, ["h"])
    assert cpu["mfu"] is None and cpu["peak_tflops"] is None
    state.device = torch.device("cuda", 0)
    state.choices = device_choices(state.device)  # every GPU choice on, as on CUDA
    real_name = torch.cuda.get_device_name
    torch.cuda.get_device_name = lambda device=None: "Test GPU"
    try:
        gpu = segment_summary(seg, state, ["h"])
    finally:
        torch.cuda.get_device_name = real_name
    tokens_per_s = 2 * 8 * 16 / 2.0
    assert gpu["device_kind"] == "cuda" and gpu["device_name"] == "Test GPU"
    assert gpu["peak_tflops"] == 1e-6
    assert gpu["mfu"] == pytest.approx(gpu["flops_per_token"] * tokens_per_s / (1 * 1e-6 * 1e12))


def test_one_step_traces_under_fake_tensor_mode():
    """What the memory tracer does: the real model and step on fake tensors, no values."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    settings = tiny_settings(activation_checkpointing=True, loss_chunk_tokens=16)
    with FakeTensorMode():
        state = init_train_state(prepare_model(TINY_CONFIG, settings, CPU), settings, SINGLE, CPU)
        result = train_step(state, torch.zeros(8, SEQ + 1, dtype=torch.long))
    assert isinstance(next(state.model.parameters()), FakeTensor)
    assert not result.skipped and state.progress.scheduler_iteration == 1
    # The update ran: AdamW holds its moments for every parameter.
    assert len(state.optimizer.state) == len(list(state.model.parameters()))
