"""Publish exported checkpoints to the Hugging Face Hub (verified) or to a local hub.

Pythia's layout: one repo per run, one branch per checkpoint (``step{N}``), ``main`` = the final
step. Users found published branches serving the wrong weights (86 of 154 pythia-2.8b branches),
so an upload here is not done until the branch has been listed back and every file's hash
compared with the local export; only then is a receipt written.


The package, by stage:

- :mod:`~pythia_suite.publish.files`: the export's files with both Hub hashes; the errors.
- :mod:`~pythia_suite.publish.hub`: one Hub branch per step, committed where hashes differ.
- :mod:`~pythia_suite.publish.local_hub`: the same into a huggingface_hub cache, read back.
- :mod:`~pythia_suite.publish.receipts`: publish, compare every branch, write the receipt.
- :mod:`~pythia_suite.publish.verify`: a whole run checked from receipts and listings.
- :mod:`~pythia_suite.publish.stage`: the CLI's entry points, reading config.publish.

The names below are re-exported so that ``from pythia_suite import publish`` reaches them.
"""

from __future__ import annotations

from pythia_suite.publish.files import (
    WEIGHTS_FILE,
    LocalFile,
    PublishError,
    PublishResult,
    UploadPlan,
    VerificationError,
    git_blob_sha1,
    hash_file,
    local_files,
)
from pythia_suite.publish.hub import plan_branch_upload, publish_step, verify_listing
from pythia_suite.publish.local_hub import local_hub_commit, publish_local, verify_local_branch
from pythia_suite.publish.receipts import is_verified, publish_and_verify, publish_card_locally
from pythia_suite.publish.verify import verify_published_run, verify_run

__all__ = [
    "WEIGHTS_FILE",
    "LocalFile",
    "PublishError",
    "PublishResult",
    "UploadPlan",
    "VerificationError",
    "git_blob_sha1",
    "hash_file",
    "is_verified",
    "local_files",
    "local_hub_commit",
    "plan_branch_upload",
    "publish_and_verify",
    "publish_card_locally",
    "publish_local",
    "publish_step",
    "verify_listing",
    "verify_local_branch",
    "verify_published_run",
    "verify_run",
]
