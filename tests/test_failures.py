"""Every row of docs/failures.md, produced for real on a tiny suite (one 2-layer run, 8 steps,
checkpoints 0/4/8) through the CLI or Snakemake: the message the user sees, that nothing
partial looks complete, and that the documented way to continue works (for training: the
result is bit-identical to an uninterrupted run).

One prepared directory (workflow copy, tiny overlay, data built up to step0) is cloned per test;
one uninterrupted run is the reference. Linux only; the disk-full row mounts a tmpfs (root).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUN = "pythia-tiny"
CKPTS = f"results/runs/{RUN}/checkpoints"
STATE = f"results/state/{RUN}"
DATASET = "results/data/datasets/standard/standard_text_document"
SHARD = "data/mini-pile/train/00.jsonl.zst"
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # Snakemake runs every job with OMP_NUM_THREADS=threads (1): by hand, the same, so that
    # results compare bit for bit (a CPU matmul's sums depend on the thread count).
    "OMP_NUM_THREADS": "1",
    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
}

TINY = """\
suite: {name: pythia, hub_org: pythia-suite-test}
matrix:
  - {sizes: [tiny], variants: [standard], seeds: [default]}
data:
  source: raw
  raw:
    shards:
      - {path: data/mini-pile/train/00.jsonl.zst}
    heldout: null
  tokenizer: {kind: train, vocab_size: 512}
model: {seq_length: 32}
training:
  train_iters: 8
  lr_decay_iters: 8
  warmup: 0.1
  global_batch: 4
  checkpoints: {factor: 4, extra: [0]}
  early_group_max_step: 0
  state_interval: 2
  log_interval: 1
  keep_resume_states: 1
  deterministic: true
sizes:
  tiny:
    {layers: 2, hidden: 32, heads: 2, lr: 3.0e-3, min_lr: 3.0e-4, micro_batch: 4, gas: 1,
     tensor_parallel: 1, init_method: small_init, output_layer_init_method: wang_init,
     precision: fp32, cluster: {nodes: 1, gpus_per_node: 0}}
publish: {hub: false, local_hub: true, dtype: float32}
evaluation: {tasks: [], local_tasks: false, zero_shot_steps: [], five_shot_steps: []}
cluster: {cpus_per_task: 1, mem_mb_per_gpu: 1000, cpu_ranks_per_node: 1, minutes_per_segment: 5}
"""

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="needs Linux (/proc, tmpfs)")


# ----------------------------------------------------------------------------- helpers


def cli(workdir: Path, *args: str, overlay: str = "tiny.yaml") -> subprocess.CompletedProcess:
    """`pythia-suite --config config.yaml --config OVERLAY ARGS` in `workdir`."""
    cmd = [str(BIN / "pythia-suite"), "--config", "config.yaml", "--config", overlay, *args]
    return subprocess.run(cmd, cwd=workdir, env=ENV, capture_output=True, text=True)


def smk_cmd(*targets: str, overlay: str = "tiny.yaml") -> list[str]:
    """The documented command: the local profile (it sets rerun-incomplete) over the overlay."""
    return [
        str(BIN / "snakemake"),
        *targets,
        "--profile",
        "profiles/local",
        "--configfile",
        "config.yaml",
        overlay,
    ]


def smk(workdir: Path, *targets: str, extra=(), overlay="tiny.yaml") -> subprocess.CompletedProcess:
    cmd = [*smk_cmd(*targets, overlay=overlay), *extra]
    return subprocess.run(cmd, cwd=workdir, env=ENV, capture_output=True, text=True)


def hooked_train(workdir: Path, hook_body: str, *args: str) -> subprocess.CompletedProcess:
    """`pythia-suite train-segment ARGS` with a training hook(event, step) that injects the
    failure at an exact point (the failure itself is real: a signal, a full file system)."""
    script = f"""
import errno, os, signal, sys
import pythia_suite.train.loop as loop
_real = loop.train_segment
def hook(event, step):
{hook_body}
def patched(*a, **k):
    k["hook"] = hook
    return _real(*a, **k)
loop.train_segment = patched
from pythia_suite.cli import main
sys.exit(main(sys.argv[1:]))
"""
    cmd = [sys.executable, "-c", script, "--config", "config.yaml", "--config", "tiny.yaml"]
    cmd += ["train-segment", RUN, *args]
    return subprocess.run(cmd, cwd=workdir, env=ENV, capture_output=True, text=True)


def clone(base: Path, dest: Path) -> Path:
    """A copy of a prepared directory; copy2 keeps mtimes, so Snakemake sees the same state."""
    shutil.copytree(base, dest, symlinks=True)
    return dest


def weights(workdir: Path, step: int) -> bytes:
    return (workdir / CKPTS / f"step{step}" / "model.safetensors").read_bytes()


def remove_artifact(path: Path) -> None:
    path.unlink()
    Path(f"{path}.provenance.json").unlink()


def looks_complete(path: Path) -> bool:
    """What a consumer could take for a finished artifact: the path itself or its record."""
    record = path / "provenance.json" if path.is_dir() else Path(f"{path}.provenance.json")
    return path.exists() or record.exists()


def nothing_to_do(workdir: Path, *targets: str) -> bool:
    dry = smk(workdir, *targets, extra=["-n"])
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    return "Nothing to be done" in dry.stdout + dry.stderr


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Workflow copy, config, tiny overlay, one mini-pile shard; built up to step0."""
    root = tmp_path_factory.mktemp("failures") / "base"
    ignore = shutil.ignore_patterns("__pycache__", ".snakemake")
    shutil.copytree(REPO / "workflow", root / "workflow", ignore=ignore)
    shutil.copytree(REPO / "envs", root / "envs")  # the rules name their conda envs
    shutil.copytree(REPO / "profiles" / "local", root / "profiles" / "local")
    shutil.copy(REPO / "config.yaml", root / "config.yaml")
    (root / SHARD).parent.mkdir(parents=True)
    shutil.copy(REPO / SHARD, root / SHARD)
    (root / "tiny.yaml").write_text(TINY)
    built = smk(root, f"{CKPTS}/step0")
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory) -> Path:
    """An uninterrupted run to step 8, published (so retention has something to prune)."""
    ref = clone(base, tmp_path_factory.mktemp("reference") / "w")
    done = smk(ref, f"results/runs/{RUN}/published/step8.json")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return ref


# ----------------------------------------------------------------------------- input data


def test_missing_input_shard(base, tmp_path):
    w = clone(base, tmp_path / "w")
    out = "results/data/corpus/standard/00.jsonl.zst"
    remove_artifact(w / out)
    (w / "bad.yaml").write_text(TINY.replace(SHARD, "data/mini-pile/train/07.jsonl.zst"))

    failed = cli(w, "fetch-shard", "00", "--output", out, overlay="bad.yaml")

    assert failed.returncode == 1
    assert "pythia-suite fetch-shard: error: " in failed.stderr
    assert "data/mini-pile/train/07.jsonl.zst" in failed.stderr
    assert not looks_complete(w / out)
    assert list((w / out).parent.iterdir()) == []  # no .part left behind
    # Continue: point the config at the shard and rerun.
    assert cli(w, "fetch-shard", "00", "--output", out).returncode == 0
    assert (w / out).read_bytes() == (w / SHARD).read_bytes()


def test_corrupt_input_shard_checksum_and_format(base, tmp_path):
    w = clone(base, tmp_path / "w")
    good = (w / SHARD).read_bytes()
    digest = hashlib.sha256(good).hexdigest()
    (w / "sha.yaml").write_text(
        TINY.replace(f"{{path: {SHARD}}}", f"{{path: {SHARD}, sha256: {digest}}}")
    )
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0xFF
    (w / SHARD).write_bytes(bytes(damaged))
    out = "results/data/corpus/standard/00.jsonl.zst"
    remove_artifact(w / out)

    # With a configured sha256 the damage is caught at fetch.
    failed = cli(w, "fetch-shard", "00", "--output", out, overlay="sha.yaml")
    assert failed.returncode == 1
    assert "pythia-suite fetch-shard: error: " in failed.stderr and digest[:12] in failed.stderr
    assert not looks_complete(w / out) and list((w / out).parent.iterdir()) == []

    # Without one, the first reader names the file (and line or offset).
    shutil.copy(w / SHARD, w / out)
    tok = cli(
        w,
        "tokenize",
        out,
        "--tokenizer",
        "results/data/tokenizer/tokenizer.json",
        "--output-prefix",
        "results/bad/00_text_document",
        "--workers",
        "1",
    )
    assert tok.returncode == 1
    assert "pythia-suite tokenize: error: " in tok.stderr and out in tok.stderr
    assert not looks_complete(w / "results/bad/00_text_document.bin")
    assert not (w / "results/bad/00_text_document.idx").exists()

    # Continue: restore the shard and rerun the same command.
    (w / SHARD).write_bytes(good)
    (w / out).unlink()
    assert cli(w, "fetch-shard", "00", "--output", out, overlay="sha.yaml").returncode == 0
    assert (w / out).read_bytes() == good


@pytest.mark.parametrize("suffix", [".bin", ".idx"])
def test_truncated_dataset(base, tmp_path, suffix):
    w = clone(base, tmp_path / "w")
    path = w / (DATASET + suffix)
    original = path.read_bytes()
    path.write_bytes(original[: len(original) - 100])

    failed = cli(w, "train-segment", RUN, "--step", "4", "--output", f"{CKPTS}/step4")

    assert failed.returncode == 1
    assert "pythia-suite train-segment: error: " in failed.stderr
    assert DATASET in failed.stderr
    assert not looks_complete(w / CKPTS / "step4")
    assert not (w / CKPTS / ".step4.partial").exists()
    # Continue: rebuild the dataset from its tokenized shards (Snakemake does not rebuild a
    # damaged file that is newer than its inputs on its own).
    rebuilt = smk(w, DATASET + ".bin", extra=["--forcerun", "merge_dataset"])
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert path.read_bytes() == original


# ----------------------------------------------------------------------------- config


BAD_CONFIGS = {
    "consistency": (
        "  global_batch: 4\n",
        "  global_batch: 6\n",
        "training.global_batch is 6",
    ),
    "schema": ("  train_iters: 8\n", "  train_iters: eight\n", "training.train_iters"),
}
SNAKEMAKE_SAYS = {  # the CLI's own line: the Snakefile runs the project's checks
    "consistency": "pythia-suite: error: config.yaml + bad.yaml: sizes.tiny: micro_batch 4",
    "schema": "pythia-suite: error: config.yaml + bad.yaml: training.train_iters: 'eight' is "
    "not of type 'integer'",
}


@pytest.mark.parametrize("kind", sorted(BAD_CONFIGS))
def test_invalid_config(base, tmp_path, kind):
    w = clone(base, tmp_path / "w")
    old, new, message = BAD_CONFIGS[kind]
    (w / "bad.yaml").write_text(TINY.replace(old, new))
    effective = w / "results/config/effective.yaml"
    before = (effective.read_bytes(), effective.stat().st_mtime_ns)

    plan = cli(w, "plan", overlay="bad.yaml")
    dry = smk(w, f"{CKPTS}/step8", extra=["-n"], overlay="bad.yaml")

    assert plan.returncode == 1 and "pythia-suite plan: error: " in plan.stderr
    assert message in plan.stderr and "bad.yaml" in plan.stderr
    assert dry.returncode != 0 and SNAKEMAKE_SAYS[kind] in dry.stdout + dry.stderr
    assert (effective.read_bytes(), effective.stat().st_mtime_ns) == before
    assert not (w / CKPTS / "step4").exists()
    # Continue: fix the file and rerun.
    assert cli(w, "plan").returncode == 0
    assert smk(w, f"{CKPTS}/step8", extra=["-n"]).returncode == 0


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_training_job_killed_resumes_bit_identical(base, reference, tmp_path, sig):
    w = clone(base, tmp_path / "w")
    args = ("--step", "4", "--resume-from", f"{CKPTS}/step0", "--output", f"{CKPTS}/step4")
    # Killed after step 3, the snapshot of step 2 saved (SIGTERM: another snapshot at 3).
    body = f"    if (event, step) == ('step_end', 3): os.kill(os.getpid(), signal.{sig})"

    killed = hooked_train(w, body, *args)

    if sig == "SIGKILL":
        assert killed.returncode == -signal.SIGKILL
        assert sorted(p.name for p in (w / STATE).glob("snapshot-*")) == ["snapshot-step2"]
    else:
        assert killed.returncode == 1
        assert (
            "pythia-suite train-segment: error: SIGTERM received; stopped after step 3 of 4, "
            f"snapshot in {STATE}"
        ) in killed.stderr
        assert sorted(p.name for p in (w / STATE).glob("snapshot-*")) == ["snapshot-step3"]
    assert not looks_complete(w / CKPTS / "step4")

    resumed = cli(w, "train-segment", RUN, *args)

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    step = 2 if sig == "SIGKILL" else 3
    assert f"starting at step {step} from {STATE}/snapshot-step{step}" in resumed.stderr
    assert weights(w, 4) == weights(reference, 4)
    assert not list((w / STATE).glob("snapshot-*"))


@pytest.fixture
def tmpfs(tmp_path):
    """A 4 MiB tmpfs: a file system that really fills up."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)])
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): disk-full row not exercised")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_while_saving_checkpoint(base, reference, tmp_path, tmpfs):
    w = clone(base, tmp_path / "w")
    out = tmpfs / "checkpoints" / "step4"
    args = ("--step", "4", "--resume-from", f"{CKPTS}/step0", "--output", str(out))
    # After the last step (the free-space check passed at the start), something else fills the
    # file system: the save then hits a real ENOSPC.
    body = f"""    if (event, step) == ('step_end', 4):
        fd = os.open({str(tmpfs / "filler")!r}, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b'x' * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC
        os.close(fd)"""

    full = hooked_train(w, body, *args)

    assert full.returncode == 1, full.stderr[-3000:]
    assert "pythia-suite train-segment: error: " in full.stderr
    assert f"error: no space left on the file system of {out.parent}" in full.stderr
    assert "free space and rerun the same command" in full.stderr
    assert "Traceback" not in full.stderr
    assert not looks_complete(out)
    assert (w / STATE / "snapshot-step2").is_dir()  # the in-progress state survives

    (tmpfs / "filler").unlink()  # free space, then the same command
    resumed = cli(w, "train-segment", RUN, *args)

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "starting at step 2" in resumed.stderr
    assert (out / "model.safetensors").read_bytes() == weights(reference, 4)
    assert not (out.parent / ".step4.partial").exists()


def test_disk_too_small_is_refused_before_training(base, tmp_path, tmpfs):
    w = clone(base, tmp_path / "w")
    (tmpfs / "filler").write_bytes(b"x" * (3 << 20) + b"x" * (700 << 10))
    out = tmpfs / "checkpoints" / "step4"

    refused = cli(w, "train-segment", RUN, "--step", "4", "--output", str(out))

    assert refused.returncode == 1
    assert f"error: not enough free space under {out.parent}: need" in refused.stderr
    assert "step 1/4" not in refused.stderr  # refused before any training
    assert not looks_complete(out)


# ----------------------------------------------------------------------------- orchestration


def _pids_running(workdir: Path, *needles: str) -> list[int]:
    """Processes started in `workdir` whose command line holds every needle."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if cwd == str(workdir) and all(n in cmdline for n in needles):
            found.append(int(proc.name))
    return found


def _wait_for(predicate, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


@pytest.mark.slow
def test_snakemake_killed_and_restarted_matches_uninterrupted(base, reference, tmp_path):
    w = clone(base, tmp_path / "w")
    target = f"{CKPTS}/step8"
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115
    first = subprocess.Popen(smk_cmd(target), cwd=w, env=ENV, stdout=log, stderr=log)
    # Kill Snakemake (only Snakemake: its running job is orphaned and goes on) while the
    # segment to step 8 runs.
    _wait_for(lambda: _pids_running(w, "train-segment", "--step 8") or first.poll() is not None)
    assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    first.send_signal(signal.SIGKILL)
    first.wait()

    again = smk(w, target)
    if again.returncode != 0 and "--unlock" in again.stdout + again.stderr:
        # The documented step: a killed Snakemake leaves its lock behind.
        assert smk(w, target, extra=["--unlock"]).returncode == 0
        again = smk(w, target)

    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    _wait_for(lambda: not _pids_running(w, "train-segment"), timeout=60)
    assert weights(w, 8) == weights(reference, 8)
    assert weights(w, 4) == weights(reference, 4)
    assert nothing_to_do(w, target)
    assert cli(w, "verify", target).returncode == 0


@pytest.mark.slow
def test_oom_killed_segment_is_retried_with_more_memory(base, reference, tmp_path):
    w = clone(base, tmp_path / "w")
    target = f"{CKPTS}/step4"
    log = open(tmp_path / "smk.log", "w")  # noqa: SIM115
    run = subprocess.Popen(
        [*smk_cmd(target), "--retries", "1"], cwd=w, env=ENV, stdout=log, stderr=log
    )
    # What the OOM killer does: SIGKILL the job's process.
    pids = _wait_for(
        lambda: _pids_running(w, "train-segment", "--step 4") or run.poll() is not None
    )
    assert run.poll() is None
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert run.wait(timeout=300) == 0, (tmp_path / "smk.log").read_text()[-3000:]

    text = (tmp_path / "smk.log").read_text()
    assert "mem_mb=1000" in text and "mem_mb=2000" in text  # attempt 2 asks for twice
    assert weights(w, 4) == weights(reference, 4)
    assert nothing_to_do(w, target)


# ----------------------------------------------------------------------------- publishing


def test_hub_connection_lost_mid_upload(base, tmp_path, monkeypatch, capsys):
    """No Hub here: huggingface_hub's HfApi is replaced by the recorded-listing fake
    (tests/hub_fake.py) whose commit dies with a connection reset, as a dropped upload does."""
    sys.path.insert(0, str(REPO / "tests"))
    from hub_fake import FakeHfApi, write_export

    from pythia_suite import cli as suite_cli

    w = clone(base, tmp_path / "w")
    monkeypatch.chdir(w)
    (w / "hub.yaml").write_text(
        TINY.replace("{hub: false, local_hub: true", "{hub: true, local_hub: false")
    )
    export = write_export(w / "results/runs" / RUN / "exports/step8", 8)
    receipt = w / "results/runs" / RUN / "published/step8.json"
    api = FakeHfApi()
    real_commit = api.create_commit
    calls = {"n": 0}

    def dropped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionResetError(104, "Connection reset by peer")
        return real_commit(*args, **kwargs)

    api.create_commit = dropped
    monkeypatch.setattr("huggingface_hub.HfApi", lambda *a, **k: api)
    argv = [
        "--config",
        "config.yaml",
        "--config",
        "hub.yaml",
        "publish",
        RUN,
        "--step",
        "8",
        "--export",
        str(export),
        "--receipt",
        str(receipt),
    ]

    assert suite_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "pythia-suite publish: error: " in err and "pythia-suite-test/pythia-tiny" in err
    assert (
        "error: commit to pythia-suite-test/pythia-tiny@step8 failed: ConnectionResetError: "
        "[Errno 104] Connection reset by peer"
    ) in err
    assert not looks_complete(receipt)
    assert not list(receipt.parent.glob(".*"))  # no half-written receipt

    # Continue: the same command once the connection is back.
    assert suite_cli.main(argv) == 0
    record = json.loads(receipt.read_text())
    assert record["verified"] is True
    checked = [(c["where"], c["branch"]) for c in record["verifications"]]
    assert checked == [("hub", "step8"), ("hub", "main")]  # step8 is the final step
    assert record["verifications"][0]["files_compared"] == len(record["files"])
    assert {e["path"] for e in api.tree("pythia-suite-test/pythia-tiny", "step8")} >= {
        "model.safetensors",
        "config.json",
    }


# ----------------------------------------------------------------------------- retention


@pytest.mark.slow
def test_retention_after_publish_keeps_snakemake_and_provenance_happy(reference, tmp_path):
    w = clone(reference, tmp_path / "w")
    target = f"results/runs/{RUN}/published/step8.json"
    assert nothing_to_do(w, target)
    step4_hash = json.loads((w / CKPTS / "step4/provenance.json").read_text())["sha256"]

    pruned = smk(w, f"results/runs/{RUN}/published/step4.json")  # publishes step4 -> prunes it
    assert pruned.returncode == 0, pruned.stderr[-3000:]
    assert (
        "step4: resume state pruned (exported, published and verified)"
        in (w / f"results/logs/publish/{RUN}/step4.log").read_text()
    )
    assert not (w / CKPTS / "step4/optimizer").exists()
    assert (w / CKPTS / "step8/optimizer").is_dir()  # the newest keeps its state
    assert (w / CKPTS / "step0/optimizer").is_dir()
    listing = cli(w, "prune", RUN, "--dry-run")
    assert "step4        pruned" in listing.stdout and "step8        keep" in listing.stdout

    assert nothing_to_do(w, target, f"results/runs/{RUN}/published/step4.json")
    verified = cli(w, "verify", f"results/runs/{RUN}/published/step4.json")
    assert verified.returncode == 0, verified.stdout[-2000:]
    assert json.loads((w / CKPTS / "step4/provenance.json").read_text())["sha256"] == step4_hash

    # A segment can no more start from a pruned checkpoint; the message says why.
    refused = cli(w, "train-segment", RUN, "--step", "8", "--output", str(tmp_path / "x"))
    assert refused.returncode == 1
    assert "retention pruned it" in refused.stderr
    assert not (tmp_path / "x").exists()
