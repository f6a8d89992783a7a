"""Resume inside a segment: killed or preempted runs finish bit-identical to uninterrupted ones."""

from __future__ import annotations

import io
import json

import pytest
import torch
from train_support import TINY_CONFIG, RandomTokens, first_segment, run_ranks, tiny_settings

from pythia_suite.train.loop import train_segment

END = 8
SETTINGS = {"state_interval": 3}  # snapshots after steps 3 and 6


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _run_here(segment: dict, **settings) -> tuple[dict, str]:
    log = io.StringIO()
    state = train_segment(
        TINY_CONFIG, tiny_settings(**settings), RandomTokens(), log=log, **segment
    )
    return state, log.getvalue()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run_here(
            {"start_checkpoint": None, "start_step": 0, "end_step": 0, "out_dir": root / "step0"}
        )
        state, _ = _run_here(
            {
                "start_checkpoint": root / "step0",
                "start_step": 0,
                "end_step": END,
                "out_dir": root / f"step{END}",
                "state_dir": root / "state",
            },
            **SETTINGS,
        )
    finally:
        torch.set_num_threads(threads)
    return root, state


def _segment(root, tmp_path):
    return first_segment(root, tmp_path / f"step{END}", END, tmp_path / "state")


def _assert_identical(tmp_path, root, state, ref_state):
    ours, ref = tmp_path / f"step{END}", root / f"step{END}"
    assert (ours / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    opt = torch.load(ours / "optimizer" / "rank00000-of-00001.pt", weights_only=True)["state"]
    ref_opt = torch.load(ref / "optimizer" / "rank00000-of-00001.pt", weights_only=True)["state"]
    assert opt.keys() == ref_opt.keys()
    for name in opt:
        for k in opt[name]:
            assert torch.equal(opt[name][k], ref_opt[name][k]), (name, k)
    assert state["losses"] == ref_state["losses"]
    assert state["data_fingerprint"] == ref_state["data_fingerprint"]
    assert state["scheduler"] == ref_state["scheduler"]
    # Snapshots are gone once the checkpoint exists; no partial directory is left behind.
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["lock"]
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize(
    "fault, resumes_at",
    [
        ({"event": "step_end", "step": 2, "action": "SIGKILL"}, None),  # before any snapshot
        ({"event": "step_end", "step": 5, "action": "SIGKILL"}, 3),  # after the first snapshot
        ({"event": "before_publish", "step": END, "action": "SIGKILL"}, 6),  # during final save
    ],
    ids=["before-first-snapshot", "after-snapshot", "during-final-save"],
)
def test_killed_run_resumes_bit_identical(uninterrupted, tmp_path, fault, resumes_at):
    root, ref_state = uninterrupted
    segment = _segment(root, tmp_path)
    assert run_ranks(1, segment, settings=SETTINGS, fault=fault) == [-9]
    assert not (tmp_path / f"step{END}").exists()
    if fault["event"] == "before_publish":
        assert (tmp_path / f".step{END}.partial" / "trainer_state.json").is_file()

    state, log = _run_here(segment, **SETTINGS)  # the lock died with the killed process
    if resumes_at is None:
        assert "starting at step 0 from" in log and "step 1/8 |" in log
    else:
        assert f"starting at step {resumes_at} from" in log
        assert f"step {resumes_at}/8 |" not in log and f"step {resumes_at + 1}/8 |" in log
    _assert_identical(tmp_path, root, state, ref_state)


def test_sigterm_saves_a_snapshot_and_exits_nonzero(uninterrupted, tmp_path):
    root, ref_state = uninterrupted
    segment = _segment(root, tmp_path)
    log_path = tmp_path / "killed.log"
    fault = {"event": "step_end", "step": 4, "action": "SIGTERM"}
    assert run_ranks(1, segment, settings=SETTINGS, fault=fault, log=str(log_path)) == [3]
    assert "snapshot at step 4" in log_path.read_text()
    assert "step 5/8" not in log_path.read_text()  # stopped at the end of the step
    trainer_state = json.loads(
        (tmp_path / "state" / "snapshot-step4" / "trainer_state.json").read_text()
    )
    assert trainer_state["step"] == 4 and len(trainer_state["history"]) == 4

    state, log = _run_here(segment, **SETTINGS)
    assert "starting at step 4 from" in log
    _assert_identical(tmp_path, root, state, ref_state)


def test_snapshots_of_another_segment_are_not_resumed(uninterrupted, tmp_path):
    root, _ = uninterrupted
    segment = _segment(root, tmp_path)

    def fail_at_5(event, step):
        if event == "step_end" and step == 5:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        train_segment(
            TINY_CONFIG,
            tiny_settings(**SETTINGS),
            RandomTokens(),
            log=io.StringIO(),
            hook=fail_at_5,
            **segment,
        )
    assert (tmp_path / "state" / "snapshot-step3").is_dir()
    # Another LR is another segment: its snapshot must not be resumed, and is removed.
    _, log = _run_here(segment, lr=5e-3, **SETTINGS)
    assert "removing snapshot of another segment" in log
    assert "starting at step 0 from" in log and "step 1/8 |" in log
    assert not (tmp_path / "state" / "snapshot-step3").exists()
