"""GPT-NeoX backend: hostfiles, node lists, launch/convert commands, segment configs, and the
run/convert wrappers against fake GPT-NeoX scripts (the real one needs GPUs)."""

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
import yaml

from pythia_suite.train import neox

# --- node lists and hostfiles ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("n[1-2]", ["n1", "n2"]),
        ("n1", ["n1"]),
        ("gpu[01-03,07],login1", ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]),
        ("a[8-10]-ib", ["a8-ib", "a9-ib", "a10-ib"]),
        ("x[3],y[0-1]", ["x3", "y0", "y1"]),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert neox.expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["", "n[2-1]", "n[a-b]", "n[1-2", "n1-2]", ",", "n[[1]]"])
def test_expand_nodelist_rejects_bad_lists_naming_them(bad):
    with pytest.raises(ValueError, match="node list"):
        neox.expand_nodelist(bad)


def test_hostnames_from_nodelist_falls_back_without_scontrol():
    hosts = neox.hostnames_from_nodelist("gpu[1-3]", scontrol="/nonexistent/scontrol")
    assert hosts == ["gpu1", "gpu2", "gpu3"]


def test_hostnames_from_nodelist_uses_scontrol(tmp_path):
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] && printf 'zz9\\nzz1\\n'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    # SLURM's answer wins over the Python parser (it knows syntax we do not).
    assert neox.hostnames_from_nodelist("n[1-2]", scontrol=str(fake)) == ["zz9", "zz1"]


def test_current_job_nodelist_prefers_env_and_needs_a_job():
    assert neox.current_job_nodelist({"SLURM_JOB_NODELIST": "n[1-2]"}) == "n[1-2]"
    with pytest.raises(neox.NeoXError, match="not inside a SLURM job"):
        neox.current_job_nodelist({})


def test_hostfile_lines_and_file(tmp_path):
    assert neox.hostfile_lines(["n1", "n2"], 8) == ["n1 slots=8", "n2 slots=8"]
    path = neox.write_hostfile(tmp_path / "hostfile", ["gpu01"], 4)
    assert path.read_text() == "gpu01 slots=4\n"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


@pytest.mark.parametrize(
    ("hosts", "gpus", "message"),
    [([], 8, "at least one"), (["n1", "n1"], 8, "twice"), (["n 1"], 8, "invalid"),
     (["n1"], 0, "gpus_per_node")],
)  # fmt: skip
def test_hostfile_lines_rejects(hosts, gpus, message):
    with pytest.raises(ValueError, match=message):
        neox.hostfile_lines(hosts, gpus)


# --- segment configs ------------------------------------------------------------------------


def _base_config() -> dict:
    """A Pythia-like base config (the 410m config's keys that matter here)."""
    return {
        "num-layers": 24,
        "optimizer": {"type": "Adam", "params": {"lr": 0.0003, "eps": 1.0e-8}},
        "train-iters": 143000,
        "lr-decay-iters": 143000,
        "warmup": 0.01,
        "checkpoint-factor": 1000,
        "extra-save-iters": [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
        "train-data-paths": ["/fsx/pile/pile_20B_tokenizer_text_document"],
        "vocab-file": "/fsx/pile/20B_tokenizer.json",
        "launcher": "pdsh",
    }


def test_segment_config_keys():
    cfg = neox.segment_config(
        _base_config(), save_dir="/ck/run", load_dir="/ck/run", start_step=512, end_step=1000,
        train_data_paths=["/data/pile_text_document"], vocab_file="/tok/tokenizer.json",
    )  # fmt: skip
    # The run's length and LR schedule stay; the segment stops by exit-interval after saving.
    assert cfg["train-iters"] == 143000
    assert cfg["lr-decay-iters"] == 143000
    assert cfg["exit-interval"] == 1000
    assert cfg["checkpoint-factor"] == 1000
    assert 1000 in cfg["extra-save-iters"] and 512 in cfg["extra-save-iters"]
    assert cfg["save"] == "/ck/run" and cfg["load"] == "/ck/run"
    assert cfg["train-data-paths"] == ["/data/pile_text_document"]
    assert cfg["valid-data-paths"] == cfg["test-data-paths"] == ["/data/pile_text_document"]
    assert cfg["vocab-file"] == "/tok/tokenizer.json"
    assert cfg["launcher"] == "slurm" and cfg["deepspeed_slurm"] is True
    assert cfg["num-layers"] == 24  # everything else untouched


def test_segment_config_off_schedule_end_step_is_saved():
    cfg = neox.segment_config(
        _base_config(), save_dir="s", load_dir="s", start_step=1000, end_step=1500,
        train_data_paths=["d"],
    )  # fmt: skip
    assert cfg["extra-save-iters"] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1500]


def test_segment_config_from_step0_does_not_load():
    base = {**_base_config(), "load": "/old/checkpoints"}
    cfg = neox.segment_config(
        base, save_dir="s", load_dir="s", start_step=0, end_step=1, train_data_paths=["d"]
    )
    assert "load" not in cfg


def test_segment_config_pins_lr_decay_and_replaces_underscore_spellings():
    base = {k.replace("-", "_"): v for k, v in _base_config().items()}
    del base["lr_decay_iters"]
    cfg = neox.segment_config(
        base, save_dir="s", load_dir="s", start_step=0, end_step=10, train_data_paths=["d"],
        overrides={"log_dir": "/logs"},
    )  # fmt: skip
    assert cfg["lr-decay-iters"] == 143000
    assert cfg["train-iters"] == 143000
    assert cfg["log_dir"] == "/logs"
    # Each key once: the underscore spellings of the keys the segment sets are gone.
    for key in ("train_iters", "lr_decay_iters", "extra_save_iters", "train_data_paths"):
        assert key not in cfg and key.replace("_", "-") in cfg


@pytest.mark.parametrize(("start", "end"), [(5, 5), (10, 5), (-1, 5), (0, 143001)])
def test_segment_config_rejects_steps_outside_the_run(start, end):
    with pytest.raises(ValueError, match="train-iters"):
        neox.segment_config(
            _base_config(), save_dir="s", load_dir="s", start_step=start, end_step=end,
            train_data_paths=["d"],
        )  # fmt: skip


def test_segment_config_needs_train_iters():
    base = _base_config()
    del base["train-iters"]
    with pytest.raises(ValueError, match="'train-iters'"):
        neox.segment_config(
            base, save_dir="s", load_dir="s", start_step=0, end_step=1, train_data_paths=["d"]
        )


def test_write_segment_config_round_trips_through_yaml(tmp_path):
    out = neox.write_segment_config(
        _base_config(), tmp_path / "seg" / "segment.yml", save_dir=tmp_path / "ck",
        load_dir=tmp_path / "ck", start_step=1, end_step=2, train_data_paths=[tmp_path / "d"],
    )  # fmt: skip
    text = out.read_text()
    loaded = yaml.safe_load(text)
    # A float written JSON-style (1e-08) would come back as a string from PyYAML.
    assert loaded["optimizer"]["params"]["eps"] == 1.0e-8
    assert loaded["save"] == str(tmp_path / "ck")
    assert loaded["exit-interval"] == 2
    assert [p.name for p in out.parent.iterdir()] == ["segment.yml"]


def test_segment_config_of_a_published_pythia_config(anchor):
    base = yaml.safe_load(anchor("models/410M/pythia-410m.yml").read_text())
    cfg = neox.segment_config(
        base, save_dir="s", load_dir="s", start_step=143000 - 1000, end_step=143000,
        train_data_paths=["d"],
    )  # fmt: skip
    assert cfg["train-iters"] == 143000
    assert cfg["exit-interval"] == 143000
    assert cfg["deepspeed_slurm"] is True


# --- commands -------------------------------------------------------------------------------


def test_neox_launch_command(tmp_path):
    launch = neox.neox_launch_command(
        tmp_path / "gpt-neox", [tmp_path / "seg.yml"], hostnames=["gpu07", "gpu08"],
        hostfile=tmp_path / "hostfile", master_port=29512, python="/env/bin/python",
    )  # fmt: skip
    neox_dir = (tmp_path / "gpt-neox").resolve()
    assert launch.argv == [
        "/env/bin/python",
        str(neox_dir / "deepy.py"),
        "train.py",
        str(tmp_path / "seg.yml"),
    ]
    assert launch.cwd == neox_dir
    assert launch.env == {
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": "29512",
        "DLTS_HOSTFILE": str((tmp_path / "hostfile").resolve()),
    }


def test_neox_launch_command_needs_configs_and_hosts(tmp_path):
    with pytest.raises(ValueError, match="config"):
        neox.neox_launch_command(tmp_path, [], hostnames=["a"], hostfile="h")
    with pytest.raises(ValueError, match="host"):
        neox.neox_launch_command(tmp_path, ["c.yml"], hostnames=[], hostfile="h")


def test_neox_convert_command(tmp_path):
    argv = neox.neox_convert_command(
        tmp_path / "neox", tmp_path / "ck/global_step1000", tmp_path / "c.yml", tmp_path / "hf"
    )
    assert argv == [
        "python", str(tmp_path / "neox/tools/convert_to_hf.py"),
        "--input_dir", str(tmp_path / "ck/global_step1000"),
        "--config_file", str(tmp_path / "c.yml"),
        "--output_dir", str(tmp_path / "hf"),
    ]  # fmt: skip


# --- running against fake GPT-NeoX scripts --------------------------------------------------

FAKE_CONVERTER = """
import argparse, json, os, sys
p = argparse.ArgumentParser()
p.add_argument("--input_dir", required=True)
p.add_argument("--config_file", required=True)
p.add_argument("--output_dir", required=True)
a = p.parse_args()
with open(os.environ["FAKE_RECORD"], "w") as fh:
    json.dump({"argv": sys.argv[1:], "cwd": os.getcwd()}, fh)
if os.environ.get("FAKE_FAIL"):
    sys.exit("conversion exploded")
os.makedirs(a.output_dir, exist_ok=True)
open(os.path.join(a.output_dir, "config.json"), "w").write("{}")
if not os.environ.get("FAKE_NO_WEIGHTS"):
    open(os.path.join(a.output_dir, "pytorch_model.bin"), "wb").write(b"w")
"""

# Stands in for deepy.py: records what it was given and saves the checkpoint the config asks for.
FAKE_DEEPY = """
import json, os, sys, yaml
cfg = yaml.safe_load(open(sys.argv[2]))
latest = os.path.join(cfg["save"], "latest")
record = {"argv": sys.argv[1:], "cwd": os.getcwd(),
          "env": {k: os.environ[k] for k in ("MASTER_ADDR", "MASTER_PORT", "DLTS_HOSTFILE")},
          "hostfile": open(os.environ["DLTS_HOSTFILE"]).read(),
          "latest": open(latest).read() if os.path.exists(latest) else None}
json.dump(record, open(os.environ["FAKE_RECORD"], "w"))
if not os.environ.get("FAKE_NO_SAVE"):
    os.makedirs(os.path.join(cfg["save"], f"global_step{cfg['exit-interval']}"))
"""


@pytest.fixture
def fake_neox(tmp_path):
    root = tmp_path / "gpt-neox"
    (root / "tools").mkdir(parents=True)
    (root / "tools" / "convert_to_hf.py").write_text(FAKE_CONVERTER)
    (root / "deepy.py").write_text(FAKE_DEEPY)
    return root


def test_convert_neox_checkpoint_runs_the_converter(tmp_path, fake_neox, monkeypatch):
    record = tmp_path / "record.json"
    monkeypatch.setenv("FAKE_RECORD", str(record))
    step = tmp_path / "ck" / "global_step1000"
    (step / "configs").mkdir(parents=True)
    cfg = step / "configs" / "pythia.yml"
    cfg.write_text("{}")
    out = neox.convert_neox_checkpoint(
        fake_neox, step, cfg, tmp_path / "hf" / "step1000", python=sys.executable
    )
    assert out == tmp_path / "hf" / "step1000"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "pytorch_model.bin"]
    seen = json.loads(record.read_text())
    assert seen["argv"][0::2] == ["--input_dir", "--config_file", "--output_dir"]
    assert seen["argv"][1] == str(step) and seen["argv"][3] == str(cfg)
    # The converter wrote to a temporary sibling that was renamed when complete.
    assert Path(seen["argv"][5]).parent == out.parent and seen["argv"][5] != str(out)
    assert seen["cwd"] == str(fake_neox.resolve())
    assert [p.name for p in out.parent.iterdir()] == ["step1000"]


@pytest.mark.parametrize(("var", "message"), [("FAKE_FAIL", "exit code 1"),
                                              ("FAKE_NO_WEIGHTS", "no weights")])  # fmt: skip
def test_convert_neox_checkpoint_failure_leaves_nothing(tmp_path, fake_neox, monkeypatch, var,
                                                       message):  # fmt: skip
    monkeypatch.setenv("FAKE_RECORD", str(tmp_path / "record.json"))
    monkeypatch.setenv(var, "1")
    step = tmp_path / "global_step1"
    step.mkdir()
    (tmp_path / "c.yml").write_text("{}")
    with pytest.raises(neox.NeoXError, match=message):
        neox.convert_neox_checkpoint(
            fake_neox, step, tmp_path / "c.yml", tmp_path / "hf" / "out", python=sys.executable
        )
    assert list((tmp_path / "hf").iterdir()) == []


def test_convert_neox_checkpoint_names_missing_inputs(tmp_path, fake_neox):
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        neox.convert_neox_checkpoint(fake_neox, tmp_path / "nope", tmp_path / "c", tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="converter"):
        neox.convert_neox_checkpoint(tmp_path, tmp_path, tmp_path / "c", tmp_path / "o")


def _segment(tmp_path, start, end):
    save = tmp_path / "ck"
    return save, neox.write_segment_config(
        _base_config(), tmp_path / f"seg{end}.yml", save_dir=save, load_dir=save,
        start_step=start, end_step=end, train_data_paths=["d"],
    )  # fmt: skip


def test_run_neox_segment(tmp_path, fake_neox, monkeypatch):
    record = tmp_path / "record.json"
    monkeypatch.setenv("FAKE_RECORD", str(record))
    save, cfg = _segment(tmp_path, 1000, 2000)
    (save / "global_step1000").mkdir(parents=True)
    (save / "global_step3000").mkdir()
    (save / "latest").write_text("global_step3000")  # left by a later segment: must not be used
    out = neox.run_neox_segment(
        fake_neox, cfg, save_dir=save, start_step=1000, end_step=2000, gpus_per_node=8,
        work_dir=tmp_path / "work", nodelist="gpu[01-02]", python=sys.executable,
    )  # fmt: skip
    assert out == save / "global_step2000" and out.is_dir()
    seen = json.loads(record.read_text())
    assert seen["argv"] == ["train.py", str(cfg)]
    assert seen["env"]["MASTER_ADDR"] == "gpu01"
    assert seen["hostfile"] == "gpu01 slots=8\ngpu02 slots=8\n"
    assert seen["latest"] == "global_step1000"
    assert seen["cwd"] == str(fake_neox.resolve())


def test_run_neox_segment_fails_without_start_checkpoint(tmp_path, fake_neox):
    save, cfg = _segment(tmp_path, 1000, 2000)
    with pytest.raises(FileNotFoundError, match="step 1000"):
        neox.run_neox_segment(
            fake_neox, cfg, save_dir=save, start_step=1000, end_step=2000, gpus_per_node=1,
            work_dir=tmp_path / "w", nodelist="n1",
        )  # fmt: skip


def test_run_neox_segment_reports_a_missing_checkpoint(tmp_path, fake_neox, monkeypatch):
    monkeypatch.setenv("FAKE_RECORD", str(tmp_path / "record.json"))
    monkeypatch.setenv("FAKE_NO_SAVE", "1")
    save, cfg = _segment(tmp_path, 0, 1)
    with pytest.raises(neox.NeoXError, match="global_step1"):
        neox.run_neox_segment(
            fake_neox, cfg, save_dir=save, start_step=0, end_step=1, gpus_per_node=1,
            work_dir=tmp_path / "w", nodelist="n1", python=sys.executable,
        )  # fmt: skip


def test_run_neox_segment_reports_failure_with_log(tmp_path, fake_neox):
    (fake_neox / "deepy.py").write_text("import sys\nprint('CUDA out of memory')\nsys.exit(3)\n")
    save, cfg = _segment(tmp_path, 0, 1)
    with pytest.raises(neox.NeoXError, match="(?s)exit code 3.*CUDA out of memory"):
        neox.run_neox_segment(
            fake_neox, cfg, save_dir=save, start_step=0, end_step=1, gpus_per_node=1,
            work_dir=tmp_path / "w", nodelist="n1", python=sys.executable,
        )  # fmt: skip


def test_gpt_neox_env_pins_versions():
    env = Path(__file__).resolve().parents[1] / "envs" / "gpt-neox.yaml"
    spec = yaml.safe_load(env.read_text())
    pips = [d for d in spec["dependencies"] if isinstance(d, dict)][0]["pip"]
    assert any("EleutherAI/DeeperSpeed.git@" in p for p in pips)
    assert neox.NEOX_V1_COMMIT in env.read_text()


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="no SLURM client installed")
def test_hostnames_from_nodelist_with_real_scontrol():
    if os.system("scontrol show hostnames n[1-2] >/dev/null 2>&1") != 0:
        pytest.skip("scontrol cannot run here (no slurm.conf)")
    assert neox.hostnames_from_nodelist("n[1-2]") == ["n1", "n2"]
