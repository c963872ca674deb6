"""Load a script under ``bench/`` as a module, for tests of its functions (bench/ is not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench(relative: str, name: str) -> ModuleType:
    """``bench/<relative>`` executed as module ``name`` (registered in sys.modules: dataclasses look it up there)."""
    spec = importlib.util.spec_from_file_location(name, BENCH / relative)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
