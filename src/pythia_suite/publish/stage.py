"""The publish stage as the workflow runs it: config.publish's choices turned into calls.

``pythia-suite publish`` publishes one step (:func:`publish_run_step`); ``pythia-suite
verify-run`` checks the whole run's publication (:func:`verify_run_publication`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pythia_suite import config as cfg
from pythia_suite import paths
from pythia_suite.atomic import write_json_atomic
from pythia_suite.provenance import Recorder
from pythia_suite.publish.receipts import publish_and_verify
from pythia_suite.publish.verify import verify_published_run


def hub_api(config: dict) -> Any | None:
    """A Hub client when publish.hub is on, else None."""
    if not config["publish"]["hub"]:
        return None
    from huggingface_hub import HfApi

    return HfApi()


def _local_hub(config: dict) -> str | None:
    """The local hub's directory when publish.local_hub is on, else None."""
    if not config["publish"]["local_hub"]:
        return None
    return paths.local_hub(config["paths"]["results"])


def publish_run_step(
    config: dict, run: cfg.Run, step: int, export: str | Path, receipt: str | Path
) -> dict[str, Any]:
    """Publish one step's export where config.publish says, verified, and record the receipt's
    provenance; return the receipt (:func:`pythia_suite.publish.receipts.publish_and_verify`)."""
    receipt = Path(receipt)
    recorder = Recorder(receipt, "publish-receipt", {"publish": config["publish"]}, [Path(export)])
    published = publish_and_verify(
        export,
        cfg.repo_id(config, run),
        step,
        receipt,
        final=step == cfg.checkpoint_steps(config)[-1],
        local_hub=_local_hub(config),
        hub_api=hub_api(config),
        private=config["publish"]["private"],
    )
    recorder.write()
    return published


def verify_run_publication(config: dict, run: cfg.Run, output: str | Path) -> dict[str, Any]:
    """The whole run's publication, checked without re-hashing
    (:func:`pythia_suite.publish.verify.verify_published_run`); the summary is written to
    ``output`` and returned."""
    results = config["paths"]["results"]
    receipts = {
        f"step{s}": paths.receipt(results, run.name, s) for s in cfg.checkpoint_steps(config)
    }
    card_receipt = Path(paths.model_card_receipt(results, run.name))
    if config["publish"]["local_hub"] and card_receipt.is_file():
        receipts["main"] = str(card_receipt)
    summary = verify_published_run(
        receipts, cfg.repo_id(config, run), local_hub=_local_hub(config), hub_api=hub_api(config)
    )
    write_json_atomic(output, summary, sort_keys=False)
    return summary
