"""Loss registry: ``build_loss(spec)`` from a config mapping such as ``{type: ce}``."""

from __future__ import annotations

import importlib
import inspect

# type -> (module, class, description)
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "ce": ("segbench.losses.ce", "CrossEntropy", "pixel-wise cross-entropy, ignore 255, optional class weights"),
}


def available() -> dict[str, str]:
    return {name: desc for name, (_, _, desc) in _REGISTRY.items()}


def build_loss(spec: dict):
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"loss spec {spec!r} needs a 'type' key; allowed types: {', '.join(_REGISTRY)}")
    kind = spec["type"]
    if kind not in _REGISTRY:
        raise ValueError(f"loss type '{kind}' is unknown; allowed types: {', '.join(_REGISTRY)}")
    module, cls_name, _ = _REGISTRY[kind]
    cls = getattr(importlib.import_module(module), cls_name)
    options = {k: v for k, v in spec.items() if k not in ("type", "name")}
    allowed = [p for p in inspect.signature(cls).parameters if p != "ignore_index"]
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise ValueError(f"loss '{kind}' has no option {', '.join(map(repr, unknown))}; allowed keys: {', '.join(allowed)}")
    return cls(**options)
