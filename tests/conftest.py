"""What every test module shares: the one path to `../shared` and how its absence is handled.

`../shared/` (beside the repository) holds reference material the tests compare against: the
original Pythia configs, result files and the GPT-NeoX-20B tokenizer. Locally it may be absent:
a test that needs it is skipped, naming the missing path. Under `CI=true` it is always present,
so its absence fails the test instead of letting it skip silently.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
PYTHIA_ANCHORS = SHARED / "anchors" / "pythia" / "EleutherAI_pythia"


def require_shared(path: Path, what: str) -> Path:
    """`path` (under `../shared`) if it exists; else skip (locally) or fail (`CI=true`),
    naming the path and `what` is absent."""
    if path.exists():
        return path
    message = f"{path} not found ({what} absent)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; under CI=true ../shared must be present")
    pytest.skip(message)


def require_anchor(relative: str | os.PathLike = "") -> Path:
    """`PYTHIA_ANCHORS / relative` if it exists; else skip (locally) or fail (`CI=true`)."""
    return require_shared(PYTHIA_ANCHORS / relative, "../shared anchors")


@pytest.fixture
def anchor() -> Callable[..., Path]:
    """`anchor("utils/20B_tokenizer.json")`: a path under the Pythia anchors, or skip/fail."""
    return require_anchor


@pytest.fixture
def one_thread():
    """torch on one intra-op thread for the test, restored after: the thread count of the rank
    processes, so a reduction sums in the same order there and here, bit for bit."""
    import torch  # here, not at the top: most test modules never import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """Groups for pytest-xdist's ``--dist loadgroup`` (scripts/test.sh runs two workers): one
    group per test file, so a module's shared set-up (a suite run) happens once; and one group
    for every test marked ``slurm``, so they take turns on the one cluster (its capacity, its
    accounting and its mail hook are shared). The long groups come first (SLURM, then ``slow``
    files), so that neither worker starts one late; the order is otherwise unchanged."""

    def group(item) -> str:
        return "slurm" if item.get_closest_marker("slurm") else item.nodeid.split("::")[0]

    slow_files = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group(item)))
    items.sort(key=lambda item: (group(item) != "slurm", group(item) not in slow_files))
