"""Tell a person when the workflow fails: Snakemake's `onerror:` handler (workflow/rules/
common.smk) calls `on_error`, which POSTs a JSON message to `notify.webhook_url` and/or mails
`notify.mail_to` with `notify.mail_program`. Nothing is sent unless the config sets them
(profiles/slurm shows how, next to SLURM's own `--mail-type` mail per job).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

_ERROR_BLOCK = re.compile(r"^(Error in rule|Error in group|RuleException|WorkflowError)")
_MAX_LINES = 200
TIMEOUT_S = 10


def _log_paths(snakemake_log) -> list[str]:
    """Snakemake 9 passes its log files as a list (older versions: one path or None)."""
    if not snakemake_log:
        return []
    if isinstance(snakemake_log, str | Path):
        return [str(snakemake_log)]
    return [str(p) for p in snakemake_log]


def failure_message(config: dict, snakemake_log) -> dict:
    """What failed, from Snakemake's log: each `Error in rule ...` block (rule, output, log,
    the shell command's exit), the log's path, the suite's name and the host."""
    errors: list[str] = []
    logs = _log_paths(snakemake_log)
    if logs:
        lines = []
        for log in logs:
            try:
                lines += Path(log).read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                pass
        block: list[str] | None = None
        for line in lines:
            if _ERROR_BLOCK.match(line):
                block = [line]
                errors.append("")
            elif block is not None and line.strip() and line.startswith((" ", "\t")):
                block.append(line)
            elif block is not None:
                errors[-1] = "\n".join(block)
                block = None
        if block is not None:
            errors[-1] = "\n".join(block)
    return {
        "event": "workflow-failed",
        "suite": config["suite"]["name"],
        "host": socket.gethostname(),
        "snakemake_log": ", ".join(logs) or None,
        "errors": errors[:_MAX_LINES],
        "hint": "pythia-suite status lists every failed job with its log",
    }


def send_webhook(url: str, message: dict, timeout: float = TIMEOUT_S) -> int:
    """POST `message` as JSON to `url`; returns the HTTP status. Raises OSError on failure."""
    request = urllib.request.Request(
        url,
        data=json.dumps(message).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (site's URL)
        return response.status


def send_mail(program: str, to: str, message: dict, timeout: float = TIMEOUT_S) -> None:
    """Mail `message` with `program -s SUBJECT TO` (mailx's interface), body on stdin.
    Raises OSError / CalledProcessError when the program is missing or fails."""
    subject = f"[{message['suite']}] workflow failed on {message['host']}"
    body = "\n\n".join(message["errors"]) or "(no error block in the Snakemake log)"
    body += f"\n\nSnakemake log: {message['snakemake_log']}\n{message['hint']}\n"
    subprocess.run([program, "-s", subject, to], input=body, text=True, check=True, timeout=timeout)


def on_error(config: dict, snakemake_log) -> list[str]:
    """Snakemake's onerror handler. Sends what `notify` asks for; returns what was sent.

    A failed notification is reported on stderr and never raises: the workflow's own error
    is what must reach the user.
    """
    notify = config.get("notify") or {}
    url, to = notify.get("webhook_url"), notify.get("mail_to")
    if not url and not to:
        return []
    try:
        message = failure_message(config, snakemake_log)
    except Exception as err:  # noqa: BLE001 (the workflow's error matters more than ours)
        message = {
            "event": "workflow-failed",
            "suite": config["suite"]["name"],
            "host": socket.gethostname(),
            "snakemake_log": None,
            "errors": [],
            "hint": f"(reading Snakemake's log failed: {err})",
        }
    sent = []
    if url:
        try:
            status = send_webhook(url, message)
            sent.append(f"webhook {url}: HTTP {status}")
        except OSError as err:
            print(f"pythia-suite notify: webhook {url} failed: {err}", file=sys.stderr)
    if to:
        program = notify.get("mail_program") or "mail"
        try:
            send_mail(program, to, message)
            sent.append(f"mail to {to} with {program}")
        except (OSError, subprocess.SubprocessError) as err:
            print(
                f"pythia-suite notify: mail to {to} with {program} failed: {err}", file=sys.stderr
            )
    for line in sent:
        print(f"pythia-suite notify: {line}", file=sys.stderr)
    return sent
