"""Model registry: ``build_model(name, num_classes, **overrides)``.

The architectures are declared in :data:`segbench.catalog.ARCHITECTURES` (name -> module and
class, description, flags); the class is imported only when built, so listing the names
costs nothing.
"""

from __future__ import annotations

import importlib
import inspect

from segbench.catalog import ARCHITECTURES


def available() -> dict[str, str]:
    """Architecture names with a one-line description."""
    return {name: a.description for name, a in ARCHITECTURES.items()}


def model_class(name: str):
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown model '{name}'; known models: {', '.join(ARCHITECTURES)}")
    module, _, cls = ARCHITECTURES[name].target.partition(":")
    return getattr(importlib.import_module(module), cls)


def build_model(name: str, num_classes: int, **overrides):
    cls = model_class(name)
    params = inspect.signature(cls).parameters
    unknown = [k for k in overrides if k not in params or k == "num_classes"]
    if unknown:
        allowed = [k for k in params if k != "num_classes"]
        raise TypeError(f"model '{name}' has no option {', '.join(map(repr, unknown))}; options: {', '.join(allowed)}")
    return cls(num_classes=num_classes, **overrides)


def options(name: str) -> dict[str, object]:
    """The constructor options of an architecture (what a config's ``params`` may set) with
    their defaults, ``num_classes`` excluded."""
    params = inspect.signature(model_class(name)).parameters
    return {k: p.default for k, p in params.items() if k != "num_classes"}
