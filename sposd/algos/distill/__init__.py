"""The self-distillation term as components: teacher contexts (`contexts.py`), token selections and weightings
(`selections.py`), the data hook that turns groups into teacher requests (`requests.py`) and the loss term
(`term.py`). The registries are keyed by the config's values; nothing else looks at a name.

`DistillTerm`, `distill_requests`, `METRIC_KEYS` and `STAT_METRICS` are importable from here (loaded on first use,
so that `sposd.algos.config` can read the registries without importing the term).
"""

from __future__ import annotations

_LAZY = {
    "DistillTerm": "term",
    "METRIC_KEYS": "term",
    "STAT_METRICS": "term",
    "distill_requests": "requests",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"sposd.algos.distill.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'sposd.algos.distill' has no attribute {name!r}")
