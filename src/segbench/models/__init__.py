"""Model registry: ``build_model(name, num_classes, **overrides)``.

Each entry maps an architecture name to its module and class, imported only when built,
so listing the names costs nothing.
"""

from __future__ import annotations

import importlib
import inspect

# name -> (module, class, one-line description)
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "unet": ("segbench.models.unet", "UNet", "U-Net (Ronneberger 2015): 64..1024 channels, transposed-conv up-sampling"),
    "segnet": ("segbench.models.segnet", "SegNet", "SegNet (Badrinarayanan 2017): VGG16-BN encoder, max-pool-index decoder"),
}


def available() -> dict[str, str]:
    """Architecture names with a one-line description."""
    return {name: desc for name, (_, _, desc) in _REGISTRY.items()}


def model_class(name: str):
    if name not in _REGISTRY:
        raise KeyError(f"unknown model '{name}'; known models: {', '.join(_REGISTRY)}")
    module, cls, _ = _REGISTRY[name]
    return getattr(importlib.import_module(module), cls)


def build_model(name: str, num_classes: int, **overrides):
    cls = model_class(name)
    params = inspect.signature(cls).parameters
    unknown = [k for k in overrides if k not in params or k == "num_classes"]
    if unknown:
        allowed = [k for k in params if k != "num_classes"]
        raise TypeError(f"model '{name}' has no option {', '.join(map(repr, unknown))}; options: {', '.join(allowed)}")
    return cls(num_classes=num_classes, **overrides)
