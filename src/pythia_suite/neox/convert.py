"""GPT-NeoX's checkpoints: what a finished save leaves in ``global_stepN``, v1.0's converter to a
Hugging Face model, and the workflow's checkpoint made from that model.

Conversion: ``python tools/convert_to_hf.py --input_dir SAVE/global_stepN --config_file CFG
--output_dir DIR`` (v1.0's name; later GPT-NeoX has ``tools/ckpts/convert_neox_to_hf.py``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from pythia_suite.atomic import atomic_directory, write_json_atomic, write_text_atomic
from pythia_suite.neox import NeoXError
from pythia_suite.neox.config import neox_value
from pythia_suite.neox.launch import latest_step, require_path
from pythia_suite.train.summary import SEGMENT_SUMMARY_NAME

# --- v1.0's converter --------------------------------------------------------------------------


def neox_convert_command(
    neox_dir: str | os.PathLike,
    global_step_dir: str | os.PathLike,
    config_file: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    python: str = "python",
) -> list[str]:
    """argv of GPT-NeoX v1.0's ``tools/convert_to_hf.py`` for one ``global_stepN`` directory.

    v1.0's converter takes one YAML (GPT-NeoX copies the run's configs into
    ``global_stepN/configs/``) and writes a ``GPTNeoXForCausalLM`` directory.
    """
    return [
        python,
        str(Path(neox_dir).resolve() / "tools" / "convert_to_hf.py"),
        "--input_dir",
        str(Path(global_step_dir).resolve()),
        "--config_file",
        str(Path(config_file).resolve()),
        "--output_dir",
        str(Path(output_dir).resolve()),
    ]


_HF_WEIGHTS = ("pytorch_model.bin", "model.safetensors", "pytorch_model.bin.index.json",
               "model.safetensors.index.json")  # fmt: skip


def _read_neox_config(config_file: Path) -> dict:
    """A segment config (plain JSON, see ``neox_json``) or a GPT-NeoX YAML; both parse as YAML."""
    import yaml

    return yaml.safe_load(config_file.read_text()) or {}


def sequential_to_layer_files(global_step_dir: str | os.PathLike, out_dir: str | os.PathLike,
                              tensor_parallel: int) -> Path:  # fmt: skip
    """The layer files v1.0's converter reads, from a checkpoint saved without pipeline stages.

    With ``pipe-parallel-size: 0`` (Pythia's 14m and 31m) GPT-NeoX v1.0 trains
    ``GPT2ModelPipe.to_sequential()``, an ``nn.Sequential`` of the same layer specs
    (``megatron/model/gpt2_model.py``), and DeepSpeed's engine saves its whole state dict as
    ``module`` in ``mp_rank_XX_model_states.pt`` (``runtime/engine.py`` ``_save_checkpoint``),
    keys ``sequential.<spec index>.<name>``. The pipeline engine would have saved spec ``i``'s
    tensors as ``layer_<i>-model_XX-model_states.pt`` (``runtime/pipe/module.py``
    ``ckpt_layer_path``), the files ``tools/convert_to_hf.py`` reads. This writes those files
    into ``out_dir`` and returns it. Raises ``NeoXError`` naming the file when a model-parallel
    rank's file is missing or holds no ``sequential.*`` tensors.
    """
    import torch

    step_dir, out_dir = Path(global_step_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for rank in range(tensor_parallel):
        path = step_dir / f"mp_rank_{rank:02d}_model_states.pt"
        if not path.is_file():
            raise NeoXError(f"sequential GPT-NeoX checkpoint incomplete: {path} not found")
        # Written by this run's own GPT-NeoX: the file also holds optimizer and scheduler state
        # (Python objects), so it cannot be read with weights_only.
        module = torch.load(path, map_location="cpu", weights_only=False).get("module") or {}
        layers: dict[int, dict] = {}
        for key, tensor in module.items():
            match = re.fullmatch(r"sequential\.(\d+)\.(.+)", key)
            if match:
                layers.setdefault(int(match[1]), {})[match[2]] = tensor
        if not layers:
            raise NeoXError(f"{path}: no sequential.* tensors in 'module' (not a pipe-parallel-"
                            "size 0 checkpoint?)")  # fmt: skip
        for index, tensors in layers.items():
            torch.save(tensors, out_dir / f"layer_{index:02d}-model_{rank:02d}-model_states.pt")
    return out_dir


def convert_neox_checkpoint(
    neox_dir: str | os.PathLike,
    global_step_dir: str | os.PathLike,
    config_file: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    python: str = "python",
    log_path: str | os.PathLike | None = None,
) -> Path:
    """Convert ``global_stepN`` to a Hugging Face model directory at ``output_dir``.

    Runs v1.0's ``tools/convert_to_hf.py`` into a temporary sibling directory and renames it
    to ``output_dir`` (replacing an old one) only once it holds ``config.json`` and weights.
    A checkpoint saved without pipeline stages (``pipe-parallel-size: 0``) is first rewritten
    into the layer files the converter reads (``sequential_to_layer_files``), beside the output.
    Raises ``FileNotFoundError`` naming a missing converter, checkpoint or config, and
    ``NeoXError`` (with the converter's output) when it fails or writes no model.
    """
    neox_dir, step_dir = Path(neox_dir), Path(global_step_dir)
    config_file, output_dir = Path(config_file), Path(output_dir)
    require_path(neox_dir / "tools" / "convert_to_hf.py", "GPT-NeoX converter")
    require_path(step_dir, "GPT-NeoX checkpoint")
    require_path(config_file, "GPT-NeoX config")
    neox_cfg = _read_neox_config(config_file)
    with atomic_directory(output_dir) as tmp:
        source = step_dir
        if neox_value(neox_cfg, "pipe-parallel-size", 1) == 0:
            source = sequential_to_layer_files(
                step_dir, tmp / "layers", neox_value(neox_cfg, "model-parallel-size", 1)
            )
        argv = neox_convert_command(neox_dir, source, config_file, tmp / "hf", python=python)
        proc = subprocess.run(argv, cwd=neox_dir.resolve(), capture_output=True, text=True)
        if log_path is not None:
            write_text_atomic(Path(log_path), proc.stdout + proc.stderr)
        problem = None
        if proc.returncode != 0:
            problem = f"exit code {proc.returncode}"
        elif not (tmp / "hf" / "config.json").is_file():
            problem = f"no config.json in {tmp / 'hf'}"
        elif not any((tmp / "hf" / name).is_file() for name in _HF_WEIGHTS):
            problem = f"no weights ({', '.join(_HF_WEIGHTS)}) in {tmp / 'hf'}"
        if problem:
            output = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
            raise NeoXError(f"converting {step_dir} failed ({problem}): {' '.join(argv)}\n{output}")
        shutil.rmtree(tmp / "layers", ignore_errors=True)
        for item in (tmp / "hf").iterdir():
            os.replace(item, tmp / item.name)
        (tmp / "hf").rmdir()
    return output_dir


# --- a finished save -------------------------------------------------------------------------


def neox_step_files(neox_config: Mapping, data_parallel: int) -> list[str]:
    """The files a finished GPT-NeoX v1.0 save leaves in ``global_stepN``, for a run's config
    and data-parallel size, as DeeperSpeed v1.0 names them:

    - ``mp_rank_XX_model_states.pt``, one per model-parallel rank (``engine._get_ckpt_name``);
    - with pipeline stages (``pipe-parallel-size`` >= 1), one
      ``layer_II-model_XX-model_states.pt`` per layer spec with weights and model-parallel rank
      (``pipe/module.py`` ``ckpt_layer_path``): 0 (embedding), 2..L+1 (transformer layers),
      L+3 (final norm), L+4 (output layer, untied);
    - with ZeRO (stage >= 1), ``zero_pp_rank_D_mp_rank_XX_optim_states.pt`` per data-parallel
      and model-parallel rank (``engine._get_rank_zero_ckpt_name``).
    """
    tp = neox_value(neox_config, "model-parallel-size", 1)
    layers = neox_value(neox_config, "num-layers")
    pipe = neox_value(neox_config, "pipe-parallel-size", 1)
    zero = (neox_value(neox_config, "zero_optimization") or {}).get("stage", 0)
    files = [f"mp_rank_{m:02d}_model_states.pt" for m in range(tp)]
    if pipe >= 1:
        specs = [0, *range(2, layers + 2), layers + 3]
        if neox_value(neox_config, "no-weight-tying", False):
            specs.append(layers + 4)
        files += [f"layer_{i:02d}-model_{m:02d}-model_states.pt" for i in specs for m in range(tp)]
    if zero >= 1:
        files += [f"zero_pp_rank_{d}_mp_rank_{m:02d}_optim_states.pt"
                  for d in range(data_parallel) for m in range(tp)]  # fmt: skip
    return files


def neox_step_missing(save_dir: str | os.PathLike, step: int, neox_config: Mapping,
                      data_parallel: int) -> list[str]:  # fmt: skip
    """What ``save_dir/global_step{step}`` lacks of a finished save (``neox_step_files``), and
    ``latest`` when it names an earlier step: DeepSpeed writes ``latest`` after every rank's
    files and a barrier, so a save that was killed leaves it at an older step. Empty when
    complete."""
    step_dir = Path(save_dir) / f"global_step{step}"
    missing = [n for n in neox_step_files(neox_config, data_parallel)
               if not (step_dir / n).is_file()]  # fmt: skip
    named = latest_step(save_dir)
    if named is None or named < step:
        missing.append(f"latest (names global_step{named}, not >= {step})")
    return missing


# --- the workflow's checkpoint -------------------------------------------------------------------


def checkpoint_from_hf_dir(
    hf_dir: str | os.PathLike,
    output: str | os.PathLike,
    hf_config: dict,
    *,
    step: int,
    start_step: int,
    neox_checkpoint: str | os.PathLike,
    record_config: dict,
    inputs: Sequence[Path] = (),
    started: float | None = None,
    world_size: int | None = None,
    segment_summary: str | os.PathLike | None = None,
) -> Path:
    """The workflow's checkpoint ``output`` from a converted GPT-NeoX checkpoint.

    Reads the converter's weights (one file or an index of shards: ``export.load_hf_weights``),
    writes them as fp32 ``model.safetensors`` with ``hf_config.json`` and a
    ``trainer_state.json`` in the PyTorch backend's format (``backend: neox``, the
    ``global_stepN`` it came from, which retention prunes like ``optimizer/``), renames the
    directory into place, then writes its provenance record: so ``checkpoint_complete``,
    ``verify``, export and retention take it as they take the PyTorch backend's. Raises
    ``ExportError`` naming the file when the converted weights cannot be read.
    """
    from safetensors.torch import save_file

    from pythia_suite.export import load_hf_weights
    from pythia_suite.provenance import Recorder
    from pythia_suite.train.checkpoint import TRAINER_STATE_FORMAT

    output = Path(output)
    tensors = load_hf_weights(hf_dir, framework="pt")
    recorder = Recorder(output, "checkpoint", record_config, list(inputs))
    if started is not None:
        recorder.started = started
    state = {
        "format": TRAINER_STATE_FORMAT,
        "step": step,
        "start_step": start_step,
        "backend": "neox",
        "neox_checkpoint": str(Path(neox_checkpoint).resolve()),
        "world_size": world_size,
        "history": [],  # GPT-NeoX logs its losses itself (neox.log in the state dir)
    }
    with atomic_directory(output) as tmp:  # replaces an old one only once the new one is whole
        save_file({k: v.float().contiguous() for k, v in tensors.items()},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})  # fmt: skip
        write_json_atomic(tmp / "hf_config.json", hf_config, indent=1)
        write_json_atomic(tmp / "trainer_state.json", state, indent=1)
        if segment_summary is not None:  # written by the job that trained the segment ending here
            shutil.copyfile(segment_summary, tmp / SEGMENT_SUMMARY_NAME)
    recorder.extra = {"neox_checkpoint": state["neox_checkpoint"], "world_size": world_size}
    recorder.write()
    return output
