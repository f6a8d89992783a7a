"""The `../shared` anchors: skipped with the reason locally, a failure under CI=true."""

from __future__ import annotations

import pytest
from conftest import PYTHIA_ANCHORS, require_anchor


def test_missing_anchor_skips_locally_naming_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"no-such-anchor\.json not found"):
        require_anchor("no-such-anchor.json")


def test_missing_anchor_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"under CI=true \.\./shared must be present"):
        require_anchor("no-such-anchor.json")


def test_present_anchor_is_returned() -> None:
    if not PYTHIA_ANCHORS.exists():
        pytest.skip(f"{PYTHIA_ANCHORS} absent")
    assert require_anchor() == PYTHIA_ANCHORS
