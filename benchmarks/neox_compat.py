"""The neox functions of the package under measure, for the benchmarks that can measure a tree
from before issue 20 (`--src`): one namespace over the `pythia_suite.neox` package's modules, or
the one module `pythia_suite.train.neox` of an older tree."""

from __future__ import annotations

import importlib
import types


def load_neox():
    """The neox functions of the package on `sys.path`, as one namespace."""
    try:
        importlib.import_module("pythia_suite.neox.config")
    except ModuleNotFoundError:
        return importlib.import_module("pythia_suite.train.neox")
    names = {}
    for part in ("config", "launch", "convert", "index_maps", "segment"):
        names.update(vars(importlib.import_module(f"pythia_suite.neox.{part}")))
    return types.SimpleNamespace(**names)
