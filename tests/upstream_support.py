"""Run GPT-NeoX v1.0's and DeeperSpeed v1.0's own code from ``../shared/anchors/upstream/``.

Nothing here copies upstream code: each helper imports the upstream file where it lies, with the
imports it cannot satisfy on this machine (CUDA builds, wandb, the DeepSpeed engine) replaced by
empty modules for the duration of the import. What is built here (the argument list deepy.py
hands DeeperSpeed's runner) follows the upstream lines it names.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import sys
import types
import typing
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from conftest import SHARED, require_shared

UPSTREAM = SHARED / "anchors" / "upstream"
NEOX = UPSTREAM / "gpt-neox-v1.0"
DEEPERSPEED = UPSTREAM / "DeeperSpeed-v1.0"


def require_upstream(relative: str = "") -> Path:
    """``UPSTREAM / relative`` if present; else skip (locally) or fail (``CI=true``)."""
    return require_shared(UPSTREAM / relative, "../shared/anchors/upstream")


@contextmanager
def stubbed_modules(modules: Mapping[str, types.ModuleType]):
    """``sys.modules`` with ``modules`` in place for the block; after it, those names and every
    module imported under them are what they were before (the modules imported inside stay
    usable through the references taken; other imports, e.g. torch, stay imported)."""
    saved = {name: sys.modules.get(name) for name in sys.modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name in list(sys.modules):
            if any(name == stub or name.startswith(stub + ".") for stub in modules):
                if saved.get(name) is None:
                    del sys.modules[name]
                else:
                    sys.modules[name] = saved[name]


def _package(name: str, path: Path | None = None, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    if path is not None:
        module.__path__ = [str(path)]
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


def deeperspeed_runner() -> types.ModuleType:
    """DeeperSpeed v1.0's ``deepspeed/launcher/runner.py`` (``main``, ``parse_args``,
    ``fetch_hostfile``; ``SlurmRunner`` from ``multinode_runner.py``), imported from the upstream
    tree with the ``deepspeed`` package's ``__init__`` (the engine, CUDA ops) left out."""
    root = require_upstream("DeeperSpeed-v1.0/deepspeed")
    stubs = {
        "deepspeed": _package("deepspeed", root),
        "deepspeed.utils": _package("deepspeed.utils", logger=logging.getLogger("deepspeed")),
        "deepspeed.launcher": _package("deepspeed.launcher", root / "launcher"),
    }
    with stubbed_modules(stubs):
        return importlib.import_module("deepspeed.launcher.runner")


def neox_arg_classes() -> list[type]:
    """GPT-NeoX v1.0's ``BASE_CLASSES`` (``megatron/neox_arguments/arguments.py``, in its order):
    the dataclasses whose fields are every key ``NeoXArgs`` accepts, from ``neox_args.py`` and
    ``deepspeed_args.py`` (their only import is ``template.py``)."""
    root = require_upstream("gpt-neox-v1.0/megatron/neox_arguments")
    name = "upstream_neox_arguments"
    with stubbed_modules({name: _package(name, root)}):
        ds = importlib.import_module(f"{name}.deepspeed_args")
        na = importlib.import_module(f"{name}.neox_args")
    return [ds.NeoXArgsDeepspeedRunner, ds.NeoXArgsDeepspeedConfig, na.NeoXArgsModel,
            na.NeoXArgsLRScheduler, na.NeoXArgsOptimizer, na.NeoXArgsTokenizer,
            na.NeoXArgsTraining, na.NeoXArgsParallelism, na.NeoXArgsLogging, na.NeoXArgsTextgen,
            na.NeoXArgsOther]  # fmt: skip


def neox_args_without_post_init() -> type:
    """A dataclass over v1.0's ``BASE_CLASSES``, as ``NeoXArgs`` is, without its
    ``__post_init__`` (which needs CUDA and a tokenizer): calling it with a config's keys
    raises the ``TypeError`` ``NeoXArgs(**config)`` raises for an unknown key."""
    return dataclasses.make_dataclass("NeoXArgsFields", [], bases=tuple(neox_arg_classes()))


def literal_violations(config: Mapping) -> list[str]:
    """Keys of ``config`` (``-`` read as ``_``) whose v1.0 field is a ``Literal`` and whose value
    is not among its choices."""
    bad = []
    for cls in neox_arg_classes():
        hints = typing.get_type_hints(cls)
        for key, value in config.items():
            field = key.replace("-", "_")
            hint = hints.get(field)
            if typing.get_origin(hint) is typing.Literal and value not in typing.get_args(hint):
                bad.append(f"{key}={value!r} not in {typing.get_args(hint)}")
    return bad


def read_config_as_neox_does(paths: list[Path]) -> tuple[dict, dict]:
    """What ``NeoXArgs.from_ymls`` (arguments.py lines 168-199) makes of config files: the
    merged values (yaml FullLoader, ``-`` -> ``_``) and ``config_files`` (basename -> text)."""
    config, files = {}, {}
    for path in paths:
        for key, value in yaml.load(path.read_text(), Loader=yaml.FullLoader).items():
            config[key.replace("-", "_")] = value
        files[path.name] = path.read_text()
    return config, files


def deepy_main_args(paths: list[Path], environ: Mapping[str, str], user_script: str = "train.py"):
    """The argument list deepy.py gives DeeperSpeed's ``runner.main`` for these config files,
    built as v1.0's ``get_deepspeed_main_args`` (arguments.py lines 397-449) builds it: runner
    fields that differ from their defaults, ``--hostfile``/``--master_addr`` from the
    environment, the user script, ``--deepspeed_config``, and ``--megatron_config`` whose
    ``config_files`` holds each file's text. (The two JSON blobs carry every value given; v1.0
    sends only those that differ from defaults, which changes nothing the runner parses.)"""
    config, files = read_config_as_neox_does(paths)
    runner_class = neox_arg_classes()[0]
    args: list[str] = []

    def arg(key, value):  # convert_key_value_to_command_line_arg, lines 387-395
        if isinstance(value, bool):
            return [f"--{key}"] if value else []
        return [] if value is None else [f"--{key}", str(value)]

    for key, default in runner_class().defaults():
        if config.get(key, default) != default:
            args += arg(key, config[key])
    if "DLTS_HOSTFILE" in environ:
        args += arg("hostfile", environ["DLTS_HOSTFILE"])
    if "MASTER_ADDR" in environ:
        args += arg("master_addr", environ["MASTER_ADDR"])
    deepspeed_config = {k: v for k, v in config.items() if k in _deepspeed_config_keys()}
    megatron = {**config, "config_files": files}
    return [*args, user_script, "--deepspeed_config", json.dumps(deepspeed_config),
            "--megatron_config", json.dumps(megatron)]  # fmt: skip


def _deepspeed_config_keys() -> set[str]:
    return {f.name for f in dataclasses.fields(neox_arg_classes()[1])}


def run_deeperspeed_main(args: list[str], monkeypatch) -> list[str]:
    """Run DeeperSpeed v1.0's ``runner.main(args)`` up to the command it would start, and return
    that command. ``subprocess.Popen`` is replaced by a recorder and ``sinfo`` is taken to exist
    (``SlurmRunner.backend_exists``); everything else is upstream's: the hostfile read, the
    choice between the local launcher and the SLURM runner, ``parse_user_args``, ``get_cmd``."""
    runner = deeperspeed_runner()
    started: list[list[str]] = []

    class Recorder:
        returncode = 0

        def __init__(self, cmd, env=None):
            started.append(list(cmd))

        def wait(self):
            return 0

    monkeypatch.setattr(runner.subprocess, "Popen", Recorder)
    monkeypatch.setattr(runner.SlurmRunner, "backend_exists", lambda self: True)
    runner.main(args)
    assert len(started) == 1, started
    return started[0]


# --- v1.0's tools/convert_to_hf.py under transformers 4.24 (its own pin) ---------------------

POST_DEPLOY = Path(__file__).resolve().parents[1] / "envs" / "gpt-neox.post-deploy.sh"
# v1.0's requirements.txt pins transformers~=4.24.0 and tokenizers==0.12.1; 0.12.1 has no cp311
# wheel, 0.13.3 (within 4.24's tokenizers<0.14) does.
TRANSFORMERS4 = ("transformers==4.24.0", "tokenizers==0.13.3", "huggingface_hub==0.11.0")


def transformers4_site() -> Path:
    """A ``pip --target`` directory holding transformers 4.24 (as benchmarks/
    check_transformers4.sh installs transformers 4), installed once into the user cache
    (``PYTHIA_SUITE_CACHE``, default ``~/.cache/pythia-suite``). Skips (fails under CI) when pip
    cannot install it."""
    import subprocess

    cache = Path(os.environ.get("PYTHIA_SUITE_CACHE", Path.home() / ".cache" / "pythia-suite"))
    site = cache / "transformers-4.24.0"
    if (site / "transformers" / "__init__.py").is_file():
        return site
    tmp = cache / f".transformers-4.24.0.tmp-{os.getpid()}"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp),
         *TRANSFORMERS4],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        message = f"cannot install {' '.join(TRANSFORMERS4)}: {proc.stderr.strip()[-300:]}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    os.replace(tmp, site)
    return site


def upstream_converter_checkout(root: Path, *, patched: bool = True) -> tuple[Path, Path]:
    """A directory laid out as a GPT-NeoX checkout for ``neox.convert.convert_neox_checkpoint``:
    ``tools/convert_to_hf.py`` is v1.0's file (patched by ``envs/gpt-neox.post-deploy.sh
    --patch-converter`` as a deployment patches it, unless ``patched`` is false), and a
    ``python`` that runs it under transformers 4.24 with v1.0's real ``megatron.tokenizer``
    (``megatron/__init__.py``, which imports the trainer, and ``sentencepiece`` and
    ``tiktoken``, which the HF tokenizer does not use, are empty stand-ins). Returns
    (checkout, python)."""
    import shutil
    import subprocess

    source = require_upstream("gpt-neox-v1.0")
    site = transformers4_site()
    checkout = root / "gpt-neox"
    (checkout / "tools").mkdir(parents=True)
    converter = checkout / "tools" / "convert_to_hf.py"
    shutil.copyfile(source / "tools" / "convert_to_hf.py", converter)
    if patched:
        subprocess.run(["bash", str(POST_DEPLOY), "--patch-converter", str(converter)], check=True)
    stubs = root / "stubs"
    (stubs / "megatron").mkdir(parents=True)
    (stubs / "megatron" / "__init__.py").write_text("")
    (stubs / "megatron" / "tokenizer").symlink_to(source / "megatron" / "tokenizer")
    for unused in ("sentencepiece", "tiktoken"):  # imported by tokenizer.py, unused by HFTokenizer
        (stubs / f"{unused}.py").write_text("")
    python = root / "bin" / "python"
    python.parent.mkdir()
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{stubs}:{site}" exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return checkout, python


# --- single upstream functions, compiled from their source --------------------------------------


def upstream_function(relative: str, qualname: str, namespace: Mapping | None = None):
    """The function ``qualname`` (``Class.method`` or ``function``) of the upstream file
    ``relative``, compiled from its own source text and defined in ``namespace`` (the module
    globals it uses): for methods whose module cannot be imported here (DeepSpeed's engine)."""
    import ast

    path = require_upstream(relative)
    node: ast.AST = ast.parse(path.read_text())
    for part in qualname.split("."):
        node = next(n for n in node.body if getattr(n, "name", None) == part)
    module = ast.Module(body=[node], type_ignores=[])
    scope = dict(namespace or {})
    exec(compile(module, str(path), "exec"), scope)  # noqa: S102 - upstream code, by design
    return scope[node.name]


def upstream_block(relative: str, qualname: str, first_line: str):
    """The statement of function ``qualname`` in ``relative`` whose source starts with
    ``first_line``, compiled: run it with ``exec(code, {"self": ...})``."""
    import ast

    path = require_upstream(relative)
    text = path.read_text()
    node: ast.AST = ast.parse(text)
    for part in qualname.split("."):
        node = next(n for n in node.body if getattr(n, "name", None) == part)
    for stmt in ast.walk(node):
        if isinstance(stmt, ast.stmt) and ast.get_source_segment(text, stmt).startswith(first_line):
            return compile(ast.Module(body=[stmt], type_ignores=[]), str(path), "exec")
    raise LookupError(f"{relative}: no statement {first_line!r} in {qualname}")


def deeperspeed_topology() -> types.ModuleType:
    """DeeperSpeed v1.0's ``runtime/pipe/topology.py`` (``PipeModelDataParallelTopology``)."""
    import importlib.util

    root = require_upstream("DeeperSpeed-v1.0/deepspeed")
    spec = importlib.util.spec_from_file_location(
        "upstream_deeperspeed_topology", root / "runtime" / "pipe" / "topology.py"
    )
    module = importlib.util.module_from_spec(spec)
    stubs = {
        "deepspeed": _package("deepspeed", root),
        "deepspeed.utils": _package("deepspeed.utils", logger=logging.getLogger("deepspeed")),
    }
    with stubbed_modules(stubs):
        spec.loader.exec_module(module)
    return module


def deeperspeed_step_files(tp: int, dp: int, layer_specs: list[int], zero_stage: int,
                           pipe: bool) -> set[str]:  # fmt: skip
    """The files DeeperSpeed v1.0 writes into ``global_stepN`` for a GPT-NeoX model with
    ``layer_specs`` (the spec indices that hold weights), named by its own methods: the
    engine's ``_get_ckpt_name`` (every model-parallel rank of data-parallel rank 0),
    ``_get_rank_zero_ckpt_name`` (every rank, ZeRO stage >= 1) and, with pipeline stages, the
    pipeline module's ``ckpt_layer_path`` (data-parallel rank 0) over v1.0's topology
    (pipe, data, model)."""
    engine = "DeeperSpeed-v1.0/deepspeed/runtime/engine.py"
    ckpt_name = upstream_function(engine, "DeepSpeedEngine._get_ckpt_name", {"os": os})
    zero_name = upstream_function(engine, "DeepSpeedEngine._get_rank_zero_ckpt_name", {"os": os})
    layer_path = upstream_function("DeeperSpeed-v1.0/deepspeed/runtime/pipe/module.py",
                                   "PipelineModule.ckpt_layer_path", {"os": os})  # fmt: skip
    topo = deeperspeed_topology().PipeModelDataParallelTopology(num_pp=1, num_mp=tp, num_dp=dp)
    files = set()
    for mp in range(tp):
        engine_self = types.SimpleNamespace(
            mpu=types.SimpleNamespace(get_model_parallel_rank=lambda mp=mp: mp),
            zero_optimization_partition_weights=lambda: False,
        )
        files.add(Path(ckpt_name(engine_self, "save", "tag")).name)
        if zero_stage >= 1:
            files |= {Path(zero_name(None, "save", "tag", mp, d)).name for d in range(dp)}
        if pipe:
            module_self = types.SimpleNamespace(
                _local_start=0, global_rank=topo.get_rank(pipe=0, data=0, model=mp),
                _grid=types.SimpleNamespace(_topo=topo),
            )  # fmt: skip
            files |= {Path(layer_path(module_self, "tag", i)).name for i in layer_specs}
    return files
