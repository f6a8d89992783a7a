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


def xdist_scope(nodeid: str) -> str:
    """The unit of work a pytest-xdist worker takes whole (``--dist loadfile``, scripts/test.sh):
    a test file, so that a module's shared set-up (a suite run) happens once, except that every
    test of a ``test_slurm_*.py`` file, and every test named ``test_slurm_*``, is one unit: the
    tests that use the cluster take turns on it (its capacity, accounting and mail hook are
    shared)."""
    path, _, name = nodeid.partition("::")
    if Path(path).name.startswith("test_slurm_") or name.startswith("test_slurm_"):
        return "slurm"
    return path


@pytest.hookimpl(tryfirst=True)  # before xdist's own choice of scheduler
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with the SLURM tests as one unit (``xdist_scope``)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FileOrSlurmScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    return FileOrSlurmScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """The long units first (the SLURM tests, then files with ``slow`` tests), so that neither
    worker starts one late; the order is otherwise unchanged. A test marked ``slurm`` outside
    the ``slurm`` unit is refused: it could run beside the other SLURM tests."""
    stray = [i.nodeid for i in items if i.get_closest_marker("slurm")
             and xdist_scope(i.nodeid) != "slurm"]  # fmt: skip
    if stray:
        raise pytest.UsageError(
            f"marked slurm but neither in a tests/test_slurm_*.py file nor named test_slurm_*: "
            f"{', '.join(stray)}"
        )
    slow = {xdist_scope(i.nodeid) for i in items if i.get_closest_marker("slow")}
    items.sort(key=lambda i: (xdist_scope(i.nodeid) != "slurm", xdist_scope(i.nodeid) not in slow))
