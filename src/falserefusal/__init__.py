"""falserefusal: a pytest-native release gate for persona-induced false refusals of language models.

The public names below are imported on first use (the pytest plugin imports this package on every run)."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that owns it
_PUBLIC = {
    "detect_refusals": "falserefusal.detection.detector",
    "RefusalDetector": "falserefusal.detection.detector",
    "AddedGate": "falserefusal.gating.custom",
    "CustomGate": "falserefusal.gating.custom",
    "RunConfig": "falserefusal.run.config",
    "Run": "falserefusal.run.pipeline",
    "run": "falserefusal.run.pipeline",
    "ModelRef": "falserefusal.generation.models",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'falserefusal' has no attribute {name!r}")
