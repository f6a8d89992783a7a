"""Issue 18's figure: `neox-doctor` on this machine, and on fakes for each failure branch.

1. The command itself on this machine, against a git repository holding GPT-NeoX v1.0's files
   (``../shared/anchors/upstream/gpt-neox-v1.0`` committed into a temporary repository: the
   files are v1.0's, the commit id is not) and this venv's Python.
2. The real probe on this machine's Pythons (this venv's, and pyenv's 3.8 when present) against
   the same files, with only the commit check told it is v1.0 (``git_head``): how far each gets.
3. The fakes: a complete v1.0 stack that passes, then one broken piece at a time (the same
   branches ``tests/test_neox_backend.py`` asserts); each prints the line the doctor prints.

    python benchmarks/neox_doctor_checks.py
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UPSTREAM = REPO.parent / "shared" / "anchors" / "upstream" / "gpt-neox-v1.0"


def show(title: str, checks) -> None:
    print(title)
    for check in checks:
        print(f"  {'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")


def main() -> int:
    from pythia_suite import config as cfg
    from pythia_suite.neox import doctor
    from pythia_suite.neox.config import flash_head_dims

    if not UPSTREAM.is_dir():
        print(f"{UPSTREAM} not found", file=sys.stderr)
        return 2
    config = cfg.load_config([REPO / "config.yaml"])
    flash = flash_head_dims(config)
    with tempfile.TemporaryDirectory(prefix="neox-doctor-") as tmp:
        checkout = Path(tmp) / "gpt-neox"
        shutil.copytree(UPSTREAM, checkout)
        git = ["git", "-C", str(checkout), "-c", "user.name=x", "-c", "user.email=x@x"]
        subprocess.run([*git, "init", "-q"], check=True)
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-qm", "v1.0 files"], check=True)

        print(f"$ pythia-suite neox-doctor --neox-dir <v1.0 files> --python {sys.executable}")
        proc = subprocess.run(
            [sys.executable, "-m", "pythia_suite.cli", "--config", str(REPO / "config.yaml"),
             "neox-doctor", "--neox-dir", str(checkout), "--python", sys.executable],
            capture_output=True, text=True,
        )  # fmt: skip
        print((proc.stdout + proc.stderr).replace(str(checkout), "<v1.0 files>").rstrip())
        print(f"exit status: {proc.returncode}\n")

        pythons = [sys.executable, *map(str, sorted(Path("/root/.pyenv/versions").glob(
            "3.8*/bin/python3.8")))]  # fmt: skip
        for python in pythons:
            checks = doctor.neox_doctor(checkout, python, flash_head_dims=flash,
                                      git_head=lambda p: doctor.NEOX_V1_COMMIT)  # fmt: skip
            show(f"real probe, {python} (commit check told v1.0):", checks)
        print()

    sys.path.insert(0, str(REPO / "tests"))
    import test_neox_backend as t

    with tempfile.TemporaryDirectory(prefix="neox-doctor-fake-") as tmp:
        root = Path(tmp) / "gpt-neox"
        (root / "megatron" / "fused_kernels").mkdir(parents=True)
        (root / "deepy.py").write_text("")
        (root / "megatron" / "fused_kernels" / "setup.py").write_text(t.SETUP_PY)
        show("fakes: a complete v1.0 stack on an A100", t._doctor(root))
        print("fakes: one broken piece at a time (the last line of each run):")
        cases = t.test_doctor_stops_at_the_first_missing_piece.pytestmark[0].args[1]
        for probe, head, _, _ in cases:
            last = t._doctor(root, probe, doctor.NEOX_V1_COMMIT if head is None else head)[-1]
            print(f"  {'ok  ' if last.ok else 'FAIL'}  {last.name}: {last.detail}")
        last = t._doctor(root, flash={"1b": 256})[-1]
        print(f"  {'ok  ' if last.ok else 'FAIL'}  {last.name}: {last.detail}")
        slow = Path(tmp) / "python"
        slow.write_text("#!/bin/sh\nsleep 30\n")
        slow.chmod(0o755)
        doctor.PROBE_TIMEOUT_S = 1
        last = doctor.neox_doctor(root, str(slow), git_head=lambda p: doctor.NEOX_V1_COMMIT)[-1]
        print(f"  {'ok  ' if last.ok else 'FAIL'}  {last.name}: {last.detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
