"""Ranks from the launcher's environment, and 2 gloo ranks vs 1 (ZeRO-1 shards, equivalence)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from train_support import (
    TINY_CONFIG,
    RandomTokens,
    assert_weights_close,
    first_segment,
    read_weights,
    run_ranks,
    tiny_settings,
    train_in_this_process,
)

from pythia_suite.train.distributed import (
    DistributedEnvError,
    detect_distributed_env,
    expand_slurm_nodelist,
)
from pythia_suite.train.loop import train_segment

# ----------------------------------------------------------------------------- environment


def test_single_process_without_launcher():
    env = detect_distributed_env({})
    assert (env.rank, env.world_size, env.source) == (0, 1, "single")


def test_torchrun_environment():
    env = detect_distributed_env(
        {
            "RANK": "3",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "MASTER_ADDR": "node7",
            "MASTER_PORT": "29400",
            "SLURM_PROCID": "0",
            "SLURM_STEP_ID": "0",
        }
    )
    assert env == type(env)(3, 8, 1, "node7", 29400, "torchrun")


def test_srun_task_environment():
    environ = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_ID": "0",
        "SLURM_JOB_ID": "123456",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
    }
    env = detect_distributed_env(environ)
    assert (env.rank, env.world_size, env.local_rank, env.source) == (5, 8, 1, "slurm")
    assert env.master_addr == "gpu07"
    assert env.master_port == 10000 + 123456 % 20000
    # The same job id gives every task the same port; MASTER_PORT overrides it.
    assert detect_distributed_env(dict(environ, SLURM_PROCID="0")).master_port == env.master_port
    assert detect_distributed_env(dict(environ, MASTER_PORT="4242")).master_port == 4242


def test_batch_script_environment_is_not_a_rank():
    # sbatch's own shell has SLURM_PROCID=0 and the job's task count but is no srun task.
    env = detect_distributed_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "9"})
    assert env.world_size == 1 and env.source == "single"


def test_bad_environment_is_named():
    with pytest.raises(DistributedEnvError, match="RANK='x'"):
        detect_distributed_env({"RANK": "x", "WORLD_SIZE": "2", "MASTER_ADDR": "a"})
    with pytest.raises(DistributedEnvError, match="rank 4 is not within a world of size 4"):
        detect_distributed_env({"RANK": "4", "WORLD_SIZE": "4", "MASTER_ADDR": "a"})
    with pytest.raises(DistributedEnvError, match="MASTER_ADDR"):
        detect_distributed_env({"RANK": "0", "WORLD_SIZE": "2"})


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("n1", ["n1"]),
        ("n[1-2]", ["n1", "n2"]),
        ("gpu[01-03,07],login1", ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]),
        ("a[9-10]-ib", ["a9-ib", "a10-ib"]),
    ],
)
def test_expand_slurm_nodelist(nodelist, hosts):
    assert expand_slurm_nodelist(nodelist) == hosts


def test_expand_slurm_nodelist_rejects_garbage():
    with pytest.raises(DistributedEnvError, match="n\\[3-1\\]"):
        expand_slurm_nodelist("n[3-1]")


# ----------------------------------------------------------------------------- 2 ranks vs 1


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted single-process run (0, 4], from a shared step0."""
    root = tmp_path_factory.mktemp("ref")
    train_in_this_process(
        tiny_settings(), start_checkpoint=None, start_step=0, end_step=0, out_dir=root / "step0"
    )
    state = train_in_this_process(
        tiny_settings(),
        start_checkpoint=root / "step0",
        start_step=0,
        end_step=4,
        out_dir=root / "step4",
    )
    return root, state


def test_two_ranks_match_one_rank_and_shard_the_optimizer(reference, tmp_path):
    root, ref_state = reference
    segment = first_segment(root, tmp_path / "step4", 4)
    # micro_batch 2: each rank takes 4 rows as 2 micro-steps of 2.
    assert run_ranks(2, segment, settings={"micro_batch": 2}) == [0, 0]
    state = json.loads((tmp_path / "step4" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    np.testing.assert_allclose(state["losses"], ref_state["losses"], rtol=1e-5)
    assert state["data_fingerprint"] == ref_state["data_fingerprint"]
    assert_weights_close(read_weights(tmp_path / "step4"), read_weights(root / "step4"))

    # ZeRO-1: each parameter's Adam state lives in exactly one rank's shard, about half each.
    shards = [
        torch.load(
            tmp_path / "step4" / "optimizer" / f"rank{r:05d}-of-00002.pt", weights_only=True
        )["state"]
        for r in range(2)
    ]
    names = set(read_weights(root / "step4"))
    assert not shards[0].keys() & shards[1].keys()
    assert shards[0].keys() | shards[1].keys() == names
    sizes = [sum(s["exp_avg"].numel() for s in shard.values()) for shard in shards]
    assert 0.35 < sizes[0] / sum(sizes) < 0.65


def test_resume_at_another_world_size(reference, tmp_path):
    root, ref_state = reference
    state_dir = tmp_path / "state"
    segment = first_segment(root, tmp_path / "step4", 4, state_dir)
    fault = {"event": "step_end", "step": 3, "action": "raise"}
    codes = run_ranks(2, segment, settings={"micro_batch": 2, "state_interval": 2}, fault=fault)
    assert codes == [3, 3]
    assert not (tmp_path / "step4").exists()
    assert (state_dir / "snapshot-step2" / "optimizer" / "rank00001-of-00002.pt").is_file()

    # One process picks up the 2-rank snapshot (both shards) and finishes the segment.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        log = io.StringIO()
        state = train_segment(
            TINY_CONFIG, tiny_settings(state_interval=2), RandomTokens(), log=log, **segment
        )
    finally:
        torch.set_num_threads(threads)
    assert "starting at step 2 from" in log.getvalue()
    assert [r["step"] for r in state["history"]] == [1, 2, 3, 4]
    np.testing.assert_allclose(state["losses"], ref_state["losses"], rtol=1e-5)
    assert state["data_fingerprint"] == ref_state["data_fingerprint"]
    assert_weights_close(read_weights(tmp_path / "step4"), read_weights(root / "step4"))
    assert sorted(p.name for p in state_dir.iterdir()) == ["lock"]  # snapshots cleaned up
