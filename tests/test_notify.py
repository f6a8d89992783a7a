"""Failure notifications, as profiles/slurm's commented example sets them up: Snakemake's
onerror handler (a webhook to a listener on 127.0.0.1 and a mail through a stub program) and
SLURM's own --mail-type mail (the local cluster's MailProg hands it to a stub hook).

Each test makes a real job fail: fetch_shard of a shard path that does not exist.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml
from suite_support import copy_repository, require_slurm_cluster, run_text

from pythia_suite import config as cfg
from pythia_suite import notify

REPO = Path(__file__).resolve().parents[1]
TARGET = "results-mini/data/corpus/standard/00.jsonl.zst"
LISTEN_S = 300  # the listener stops by itself after this long


def profile_example() -> dict:
    """The notification block of profiles/slurm/profile.yaml, uncommented and parsed."""
    text = (REPO / "profiles/slurm/profile.yaml").read_text()
    block = re.search(r"^# >>> notifications\n(.*?)^# <<< notifications", text, re.M | re.S)
    assert block, "profiles/slurm/profile.yaml: no '# >>> notifications' block"
    lines = [line[2:] if line.startswith("# ") else line[1:] for line in block[1].splitlines()]
    return yaml.safe_load("\n".join(lines))


class Listener:
    """An HTTP listener on 127.0.0.1 that records POSTed JSON; stops by itself."""

    def __init__(self):
        self.posts: list[dict] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                posts.append({"path": self.path, "json": json.loads(body)})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.timer = threading.Timer(LISTEN_S, self.stop)
        self.timer.start()

    def stop(self):
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()


def _example_args(url: str, mail_to: str, extra_notify: str = "") -> tuple[list[str], list[str]]:
    """(--default-resources entries, --config entries) of the profile's example, with the
    test's URL and address in place of the example's."""
    example = profile_example()
    resources = [r.replace("ops@example.org", mail_to) for r in example["default-resources"]]
    config = [
        c.replace("https://hooks.example.org/pythia", url)
        .replace("ops@example.org", mail_to)
        .replace("}", extra_notify + "}")
        for c in example["config"]
    ]
    return resources, config


def _broken_repo(root: Path) -> None:
    copy_repository(root)
    (root / "broken.yaml").write_text(
        yaml.safe_dump({"data": {"raw": {"shards": [{"path": "no/such/shard.jsonl.zst"}] * 2}}})
    )


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}


def _snakemake() -> str:
    return str(Path(sys.executable).with_name("snakemake"))


def test_profile_example_is_valid_and_off_by_default():
    example = profile_example()
    assert any("--mail-type=FAIL" in r for r in example["default-resources"])
    from snakemake.cli import parse_config

    overlay = parse_config(example["config"])
    config = cfg.load_config([REPO / "config.yaml"], overlay)
    assert config["notify"]["webhook_url"] == "https://hooks.example.org/pythia"
    default = cfg.load_config([REPO / "config.yaml"])
    assert default["notify"] == {"webhook_url": None, "mail_to": None, "mail_program": "mail"}
    # profile.yaml itself sends nothing: the block is commented out.
    profile = yaml.safe_load((REPO / "profiles/slurm/profile.yaml").read_text())
    assert "config" not in profile
    assert not any("mail" in str(r) for r in profile["default-resources"])


def test_nothing_sent_by_default(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("sent without being asked")

    monkeypatch.setattr(notify, "send_webhook", forbidden)
    monkeypatch.setattr(notify, "send_mail", forbidden)
    assert notify.on_error(cfg.load_config([REPO / "config.yaml"]), "/nonexistent.log") == []


def _mail_stub(path: Path, record: Path) -> Path:
    path.write_text(f'#!/bin/sh\n{{ echo "ARGS: $*"; cat; echo "---"; }} >> "{record}"\n')
    path.chmod(0o755)
    return path


@pytest.mark.slow
def test_onerror_webhook_and_mail_on_a_failed_job(tmp_path):
    root = tmp_path / "repo"
    _broken_repo(root)
    mailbox = tmp_path / "mailbox.txt"
    stub = _mail_stub(tmp_path / "mail", mailbox)
    listener = Listener()

    def snakemake(*config: str, overlay: str = "broken.yaml") -> subprocess.CompletedProcess:
        argv = [
            _snakemake(),
            "--profile",
            "profiles/local",
            "--configfile",
            "config.yaml",
            "config/mini.yaml",
            overlay,
            "--config",
            *config,
            "--",
            TARGET,
        ]
        return subprocess.run(
            argv, cwd=root, env=_env(), capture_output=True, text=True, timeout=300
        )

    try:
        _, config = _example_args(listener.url, "ops@test.invalid", f", mail_program: {stub}")
        run = snakemake(*config)
        # The workflow's start recorded plan's prediction; a later start never rewrites it.
        plan = root / "results-mini/plan.json"
        recorded = plan.read_text()
        assert json.loads(recorded)["runs"]["pythia-0.4m"]["mfu"] == 0.02
        changed = yaml.safe_load((root / "broken.yaml").read_text())
        (root / "changed.yaml").write_text(
            yaml.safe_dump({**changed, "cluster": {"assumed_mfu": 0.5}})
        )
        again = snakemake(*config, overlay="changed.yaml")
        assert "Error in rule fetch_shard" in again.stdout + again.stderr
        assert plan.read_text() == recorded
    finally:
        listener.stop()
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]
    assert len(listener.posts) == 2, output[-3000:]
    message = listener.posts[0]["json"]
    assert listener.posts[0]["path"] == "/hook"
    assert message["event"] == "workflow-failed" and message["suite"] == "pythia"
    assert any(e.startswith("Error in rule fetch_shard") for e in message["errors"])
    assert "data/fetch_shard/00.log" in "\n".join(message["errors"])
    mail = mailbox.read_text()
    assert "ARGS: -s [pythia] workflow failed on" in mail and "ops@test.invalid" in mail
    assert "Error in rule fetch_shard" in mail
    # status finds the same failure: from the Snakemake log, with the job's log and error.
    status = _suite_status(root, "--no-slurm")
    assert status.returncode == 0, status.stderr
    assert f"failed     fetch_shard {TARGET}" in status.stdout
    assert "log: results-mini/logs/data/fetch_shard/00.log" in status.stdout
    error = status.stdout.split("last error: ", 1)[1].splitlines()[0]
    assert "no/such/shard.jsonl.zst" in error, status.stdout


def _slurm_state_dir() -> Path:
    return Path(os.environ.get("PYTHIA_SLURM_DIR", "/var/tmp/pythia-slurm"))


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_mails_a_failed_job_through_mailprog(tmp_path):
    require_slurm_cluster()
    shim = _slurm_state_dir() / "bin/slurm-mail"
    config_line = run_text("scontrol", "show", "config")
    if f"{shim}" not in config_line:
        message = (
            f"the cluster's MailProg is not {shim}: apply the current config with "
            "`scripts/slurm-cluster.sh reconfigure` (root; nothing is restarted)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    hook = _slurm_state_dir() / "etc/mail-hook"
    if hook.exists():
        pytest.skip(f"{hook} exists: another test run is using the cluster's mail hook")
    root = tmp_path / "repo"
    _broken_repo(root)
    mailbox = tmp_path / "slurm-mail.txt"
    listener = Listener()
    try:
        _mail_stub(hook, mailbox)
        resources, config = _example_args(listener.url, "root")
        site = ["slurm_account=pythia", "slurm_partition=debug", "mem_mb=500", "runtime=10"]
        resources = [r for r in resources if not r.startswith(("mem_mb", "runtime"))] + site
        run = subprocess.run(
            [
                _snakemake(),
                "--profile",
                "profiles/slurm",
                "--configfile",
                "config.yaml",
                "config/mini.yaml",
                "broken.yaml",
                "--default-resources",
                *resources,
                "--config",
                *config,
                "--slurm-init-seconds-before-status-checks",
                "2",
                "--retries",
                "0",
                "--",
                TARGET,
            ],
            cwd=root,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        output = run.stdout + run.stderr
        assert run.returncode != 0, output[-3000:]
        job_ids = re.findall(r"submitted with SLURM jobid (\d+)", output)
        assert job_ids, output[-3000:]
        deadline = time.monotonic() + 120  # slurmctld mails when it records the end
        while time.monotonic() < deadline and job_ids[-1] not in _read(mailbox):
            time.sleep(2)
    finally:
        hook.unlink(missing_ok=True)
        listener.stop()
    mail = _read(mailbox)
    assert re.search(rf"ARGS: -s .*Job_id={job_ids[-1]} .*Failed.* root", mail), mail or output
    # status, asking SLURM: the failed job with its log and SLURM job id.
    status = _suite_status(root)
    assert status.returncode == 0, status.stderr
    assert f"failed     fetch_shard {TARGET} SLURM job {job_ids[-1]}" in status.stdout
    assert "SLURM: no running or pending jobs of the suite" in status.stdout
    assert len(listener.posts) == 1 and listener.posts[0]["json"]["event"] == "workflow-failed"


def _suite_status(root: Path, *options: str) -> subprocess.CompletedProcess:
    """`pythia-suite status` run in the suite copy ``root``, as a user would."""
    config = "results-mini/config/effective.yaml"
    return subprocess.run(
        [sys.executable, "-m", "pythia_suite.cli", "--config", config, "status", *options],
        cwd=root,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""
