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
    "gradnet": ("segbench.models.gradnet", "GraDNet",
                "GraDNet (Jia 2022): 11x11/4 stem, Gra layer (windowed 2nd-order differences), asymmetric convs"),
    "deeplabv3": ("segbench.models.deeplab", "DeepLabV3", "DeepLabV3 (Chen 2017): dilated ResNet-50/101 + ASPP"),
    "deeplabv3_pac": ("segbench.models.deeplab", "DeepLabV3PAC",
                      "DeepLabV3 with Pyramid Atrous Convolution (Yu): one 3x3 filter shared by several rates"),
    "van_fpn_frm": ("segbench.models.van_fpn", "VanFpnFrm",
                    "VAN + FPN + Feature Refinement Module (Wang 2024): DNL block on pooled multi-stage features"),
    "van_fpn_ppm": ("segbench.models.van_fpn", "VanFpnPpm",
                    "VAN + FPN + PPM on the multi-stage features (FRM paper's ablation)"),
    "van_fpn_dappm": ("segbench.models.van_fpn", "VanFpnDappm",
                      "VAN + FPN + DDRNet's DAPPM on the multi-stage features (FRM paper's ablation)"),
    "unet_xception": ("segbench.models.unet_xception", "UNetXception",
                      "U-Net with an Xception-style separable-conv encoder (Saraceno 2022, Keras example)"),
    "segnet_mobilenet": ("segbench.models.segnet_mobilenet", "SegNetMobileNet",
                         "SegNet with a MobileNet v1 encoder, no skips (Saraceno 2022, keras-segmentation)"),
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


def options(name: str) -> dict[str, object]:
    """The constructor options of an architecture (what a config's ``params`` may set) with
    their defaults, ``num_classes`` excluded."""
    params = inspect.signature(model_class(name)).parameters
    return {k: p.default for k, p in params.items() if k != "num_classes"}
