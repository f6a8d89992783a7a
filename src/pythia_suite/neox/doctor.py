"""``neox-doctor``: whether GPT-NeoX v1.0 can launch, train and convert here, checked in order
before anything is queued (the checkout, its environment's Python, torch, DeeperSpeed, megatron,
the fused and flash kernels for every GPU, the converter).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pythia_suite.neox import NeoXError
from pythia_suite.neox.config import flash_attn_problem, flash_head_dims

NEOX_V1_COMMIT = "71df4d5017f9f4919566a11454fe3a507ffdc632"  # GPT-NeoX tag v1.0
# What envs/gpt-neox.yaml installs; the doctor checks the environment against it.
# GPT-NeoX v1.0 README: "developed and tested for Python 3.8"; 3.9 "appears to work".
SUPPORTED_PYTHON = ((3, 8), (3, 9))
PINNED_TORCH = "1.12.1"  # envs/gpt-neox.yaml
# DeeperSpeed tag v1.0 (the SLURM runner); its setup.py records `git rev-parse --short HEAD` as
# deepspeed.__git_hash__. v1.0's own requirements pin eb7f5cff, which has no SLURM runner.
DEEPERSPEED_V1_COMMIT = "7069d10d2c9abac50576c84cb7e45910fafa218c"
FUSED_KERNELS = ("scaled_upper_triang_masked_softmax_cuda", "scaled_masked_softmax_cuda")
FLASH_KERNEL = "flash_attn_cuda"  # flash-attn 0.2.2's extension, used when a layer is flash


# Run by the GPT-NeoX environment's Python: reports what it has, never fails itself.
_PROBE = r"""
import importlib, importlib.util, json, os, sys
out = {"python": list(sys.version_info[:3])}
sys.path.insert(0, sys.argv[1])
def attempt(name):
    try:
        module = importlib.import_module(name)
        return {"ok": True, "version": getattr(module, "__version__", None),
                "git_hash": getattr(module, "__git_hash__", None)}
    except BaseException as err:
        return {"ok": False, "error": f"{type(err).__name__}: {err}"}
out["torch"] = attempt("torch")
if out["torch"]["ok"]:
    import torch
    out["torch"]["cuda"] = torch.version.cuda
    try:
        out["torch"]["arch_list"] = torch.cuda.get_arch_list()
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        out["gpus"] = [{"name": torch.cuda.get_device_name(i),
                        "capability": list(torch.cuda.get_device_capability(i))} for i in range(n)]
    except BaseException as err:
        out["gpus"] = []
        out["gpu_error"] = f"{type(err).__name__}: {err}"
out["deepspeed"] = attempt("deepspeed")
out["megatron"] = attempt("megatron")
out["kernels"] = {name: attempt(name) for name in sys.argv[2:]}
try:  # definitions and imports only: the script's work is under __main__
    path = os.path.join(sys.argv[1], "tools", "convert_to_hf.py")
    spec = importlib.util.spec_from_file_location("convert_to_hf", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    out["converter"] = {"ok": True}
except BaseException as err:
    out["converter"] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
print(json.dumps(out))
"""


@dataclass(frozen=True)
class DoctorCheck:
    """One line of ``neox-doctor``: what was checked, whether it passed, what was found."""

    name: str
    ok: bool
    detail: str


def kernel_archs(neox_dir: str | os.PathLike) -> list[tuple[int, int]]:
    """The GPU architectures GPT-NeoX's fused kernels are compiled for (``code=sm_XY`` in
    ``megatron/fused_kernels/setup.py``; v1.0: sm_70 and sm_80). Empty when unreadable."""
    path = Path(neox_dir) / "megatron" / "fused_kernels" / "setup.py"
    try:
        text = path.read_text()
    except OSError:
        return []
    found = {(int(m[0]), int(m[1])) for m in re.findall(r"code=sm_(\d)(\d+)", text)}
    return sorted(found)


def arch_supported(capability: Sequence[int], archs: Sequence[tuple[int, int]]) -> bool:
    """Whether a GPU of compute capability ``(major, minor)`` runs cubins built for ``archs``:
    same major, built minor <= the GPU's (CUDA's binary compatibility; no PTX is embedded)."""
    major, minor = int(capability[0]), int(capability[1])
    return any(a_major == major and a_minor <= minor for a_major, a_minor in archs)


def torch_runs_on(capability: Sequence[int], arch_list: Sequence[str]) -> bool:
    """Whether a torch build whose ``torch.cuda.get_arch_list()`` is ``arch_list`` has kernels
    for a GPU of ``capability``: a cubin ``sm_XY`` of the same major and minor <= the GPU's, or
    PTX ``compute_XY`` at or below it (compiled on load)."""
    gpu = (int(capability[0]), int(capability[1]))
    for arch in arch_list:
        match = re.fullmatch(r"(sm|compute)_(\d)(\d+)", arch)
        if not match:
            continue
        built = (int(match[2]), int(match[3]))
        if match[1] == "sm" and built[0] == gpu[0] and built[1] <= gpu[1]:
            return True
        if match[1] == "compute" and built <= gpu:
            return True
    return False


def _git_head(neox_dir: Path) -> str:
    proc = subprocess.run(["git", "-C", str(neox_dir), "rev-parse", "HEAD"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    if proc.returncode != 0:
        raise NeoXError(proc.stderr.strip() or f"git rev-parse failed in {neox_dir}")
    return proc.stdout.strip()


PROBE_TIMEOUT_S = 300


def _probe(python: str, neox_dir: Path) -> dict:
    argv = [python, "-c", _PROBE, str(neox_dir), *FUSED_KERNELS, FLASH_KERNEL]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise NeoXError(f"{python} did not finish the probe in {PROBE_TIMEOUT_S} s") from None
    except OSError as err:
        raise NeoXError(f"cannot run {python}: {err}") from None
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        raise NeoXError(
            f"{python} could not run the probe (exit {proc.returncode}): {tail}"
        ) from None


def _one_line(text: str, limit: int = 400) -> str:
    """``text`` on one line (a traceback or a multi-line error would break the report)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class _Report:
    """The checks done so far, each detail on one line."""

    def __init__(self) -> None:
        self.checks: list[DoctorCheck] = []

    def passed(self, name: str, ok: bool, detail: str, fix: str = "") -> bool:
        """Record a check (``fix`` appended to the detail when it failed); returns ``ok``."""
        self.checks.append(DoctorCheck(name, ok, _one_line(detail if ok else f"{detail}{fix}")))
        return ok


def neox_doctor(
    neox_dir: str | os.PathLike | None,
    python: str = "python",
    *,
    flash_head_dims: Mapping[str, int] | None = None,
    git_head: Callable[[Path], str] = _git_head,
    probe: Callable[[str, Path], dict] = _probe,
) -> list[DoctorCheck]:
    """Check that GPT-NeoX v1.0 can launch, train and convert here, in order; stops at the
    first failure.

    The checkout (deepy.py, pinned commit), the environment's Python and torch (the pinned
    CUDA build, with kernels for every GPU: ``torch.cuda.get_arch_list()``), DeeperSpeed at
    tag v1.0's commit, ``megatron`` importable, GPT-NeoX's fused kernels built and built for
    every GPU, flash-attn's kernel (``flash_attn_cuda``) importable, flash-attn 0.2.2's limits
    for every configured size that uses flash (``flash_head_dims``: size -> head dimension) on
    every GPU, and ``tools/convert_to_hf.py`` importable (as ``envs/gpt-neox.post-deploy.sh``
    patched it). ``git_head`` and ``probe`` (what ``python`` reports about itself) are
    parameters so that each failure can be tested without GPT-NeoX. Every detail is one line.
    Returns the checks done; the last one failed when any did.
    """
    report = _Report()
    root = _check_checkout(report, neox_dir, git_head)
    if root is None:
        return report.checks
    try:
        found = probe(python, root)
    except NeoXError as err:
        report.passed("Python", False, str(err))
        return report.checks
    if (
        _check_python_and_torch(report, found, python)
        and _check_deeperspeed_and_megatron(report, found)
        and _check_fused_kernels(report, found, root)
        and (not flash_head_dims or _check_flash(report, found, flash_head_dims))
    ):
        _check_converter(report, found)
    return report.checks


def _check_checkout(report: _Report, neox_dir: str | os.PathLike | None,
                    git_head: Callable[[Path], str]) -> Path | None:  # fmt: skip
    """The checkout has deepy.py and is at the pinned commit: its path, else None."""
    if not neox_dir:
        report.passed(
            "GPT-NeoX checkout", False, "training.neox.dir is not set (envs/gpt-neox.yaml)"
        )
        return None
    root = Path(neox_dir)
    deepy = root / "deepy.py"
    if not report.passed("GPT-NeoX checkout", deepy.is_file(), str(deepy), " not found"):
        return None
    try:
        head = git_head(root)
    except (NeoXError, OSError, subprocess.SubprocessError) as err:
        report.passed("pinned commit", False, f"cannot read the commit of {root}: {err}")
        return None
    pinned = f", expected {NEOX_V1_COMMIT} (tag v1.0)"
    if not report.passed("pinned commit", head == NEOX_V1_COMMIT, f"{root} is at {head}", pinned):
        return None
    return root


def _gpus_seen(found: dict) -> str:
    """The probed GPUs, named with their architecture."""
    gpus = found.get("gpus") or []
    return "; ".join(f"{g['name']} sm_{g['capability'][0]}{g['capability'][1]}" for g in gpus)


def _check_python_and_torch(report: _Report, found: dict, python: str) -> bool:
    """Python 3.8 or 3.9; the pinned torch, a CUDA build; a GPU; torch's kernels for it."""
    version = tuple(found.get("python", ()))
    wanted = " or ".join(f"{a}.{b}" for a, b in SUPPORTED_PYTHON)
    detail = f"{python}: Python {'.'.join(map(str, version))}"
    if not report.passed("Python", version[:2] in SUPPORTED_PYTHON, detail,
                         f"; v1.0 needs {wanted}"):  # fmt: skip
        return False
    torch = found.get("torch", {})
    if not torch.get("ok"):
        return report.passed("torch", False, f"not importable: {torch.get('error')}")
    good = str(torch.get("version", "")).split("+")[0] == PINNED_TORCH and bool(torch.get("cuda"))
    detail = f"torch {torch.get('version')} (CUDA {torch.get('cuda')})"
    fix = f"; envs/gpt-neox.yaml pins {PINNED_TORCH}, a CUDA build"
    if not report.passed("torch", good, detail, fix):
        return False
    gpus = found.get("gpus") or []
    if not gpus:
        why = found.get("gpu_error") or "torch sees no CUDA device"
        return report.passed("GPU", False, f"no GPU ({why})")
    arch_list = torch.get("arch_list") or []
    bad = [g for g in gpus if not torch_runs_on(g["capability"], arch_list)]
    detail = (
        f"{_gpus_seen(found)}; torch {torch.get('version')} has kernels for {', '.join(arch_list)}"
    )
    return report.passed("torch GPU kernels", not bad, detail, " (none for this GPU)")


def _check_deeperspeed_and_megatron(report: _Report, found: dict) -> bool:
    """DeeperSpeed at tag v1.0's commit (its SLURM runner), then ``megatron`` importable."""
    deepspeed = found.get("deepspeed", {})
    if not deepspeed.get("ok"):
        return report.passed("DeeperSpeed", False, f"not importable: {deepspeed.get('error')}")
    commit = str(deepspeed.get("git_hash") or "")
    detail = f"deepspeed {deepspeed.get('version')} at commit {commit or 'unknown'}"
    fix = f", expected DeeperSpeed tag v1.0 = {DEEPERSPEED_V1_COMMIT[:7]} (its SLURM runner)"
    right = len(commit) >= 7 and DEEPERSPEED_V1_COMMIT.startswith(commit)
    if not report.passed("DeeperSpeed", right, detail, fix):
        return False
    megatron = found.get("megatron", {})
    detail = "importable" if megatron.get("ok") else f"not importable: {megatron.get('error')}"
    return report.passed("megatron", bool(megatron.get("ok")), detail)


def _check_fused_kernels(report: _Report, found: dict, root: Path) -> bool:
    """GPT-NeoX's fused kernels built, and built for every GPU's architecture."""
    kernels = found.get("kernels") or {}
    missing = [name for name in FUSED_KERNELS if not kernels.get(name, {}).get("ok")]
    fix = " (python megatron/fused_kernels/setup.py install)"
    detail = f"not built: {', '.join(missing)}" if missing else "built: " + ", ".join(FUSED_KERNELS)
    if not report.passed("fused kernels", not missing, detail, fix):
        return False
    archs = kernel_archs(root)
    built = ", ".join(f"sm_{a}{b}" for a, b in archs) or "no architecture found"
    bad = [g for g in found.get("gpus") or [] if not arch_supported(g["capability"], archs)]
    fix = " (no kernel for this GPU: H100-class needs the changes in envs/gpt-neox.yaml)"
    detail = f"{_gpus_seen(found)}; kernels built for {built}"
    return report.passed("GPU architecture", not bad, detail, fix)


def _check_flash(report: _Report, found: dict, head_dims: Mapping[str, int]) -> bool:
    """flash-attn's kernel importable, and flash-attn 0.2.2's limits met by every size that
    uses flash (``head_dims``: size -> head dimension) on every GPU."""
    flash = (found.get("kernels") or {}).get(FLASH_KERNEL, {})
    error = flash.get("error") or "not probed"
    detail = "importable" if flash.get("ok") else f"not importable: {error}"
    fix = " (flash-attn==0.2.2, envs/gpt-neox.post-deploy.sh)"
    if not report.passed("flash-attn kernel", bool(flash.get("ok")), detail, fix):
        return False
    problems = [
        f"{size} (head dim {dim}) on {g['name']}: {why}"
        for size, dim in sorted(head_dims.items())
        for g in found.get("gpus") or []
        if (why := flash_attn_problem(dim, g["capability"]))
    ]
    sizes = ", ".join(f"{s} ({d})" for s, d in sorted(head_dims.items()))
    detail = (
        problems[0] if problems else f"sizes using flash (head dim): {sizes}; {_gpus_seen(found)}"
    )
    return report.passed("flash-attn limits", not problems, detail)


def _check_converter(report: _Report, found: dict) -> bool:
    """``tools/convert_to_hf.py`` importable (as ``envs/gpt-neox.post-deploy.sh`` patched it)."""
    converter = found.get("converter", {})
    detail = "tools/convert_to_hf.py imports" if converter.get("ok") else (
        f"tools/convert_to_hf.py does not import: {converter.get('error')}"
    )  # fmt: skip
    fix = " (envs/gpt-neox.post-deploy.sh patches it for Python 3.8)"
    return report.passed("converter", bool(converter.get("ok")), detail, fix)


def check_environment(config: Mapping, neox_dir: str | None = None,
                      python: str | None = None) -> None:  # fmt: skip
    """``pythia-suite neox-doctor``: print every check (``neox_doctor``) of the checkout at
    ``neox_dir`` with ``python`` (default: ``training.neox``'s) and the sizes the config trains
    with flash. Raises ``RuntimeError`` naming the first check that failed."""
    from pythia_suite.neox.config import neox_settings

    settings = neox_settings(config)
    checks = neox_doctor(
        neox_dir or settings["dir"],
        python or settings["python"],
        flash_head_dims=flash_head_dims(config),
    )
    for check in checks:
        print(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
    failed = [check for check in checks if not check.ok]
    if failed:
        raise RuntimeError(f"GPT-NeoX cannot launch here: {failed[0].name}: {failed[0].detail}")
    print("GPT-NeoX v1.0 can launch here")
