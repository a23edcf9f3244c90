"""Loss registry: ``build_loss(spec)`` from a config mapping such as ``{type: ce}``.

Every loss is a plain ``nn.Module`` called as ``loss(logits, labels)`` (labels [N, H, W],
255 = ignore, carrying no loss). A loss with ``needs_embeddings = True`` is called as
``loss(logits, labels, embeddings=...)`` in training, with the embeddings of
``model.forward_train``. Options are checked when the loss is built: an unknown key or a
bad value fails naming the key and the allowed values. docs/losses.md describes each loss.

Importing this module costs nothing (no torch): the config validation reads
``NEEDS_EMBEDDINGS`` at start-up.
"""

from __future__ import annotations

import importlib
import inspect

# type -> (module, class, description)
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "ce": ("segbench.losses.ce", "CrossEntropy", "pixel-wise cross-entropy, ignore 255, optional class weights"),
    "dice": ("segbench.losses.dice", "Dice", "multi-class soft Dice over the batch (GraDNet Eq. 1)"),
    "focal": ("segbench.losses.focal", "Focal", "focal loss (Lin et al. 2017), gamma 2, optional class weights"),
    "bal": ("segbench.losses.bal", "BoundaryAwareLoss",
            "boundary-aware loss (PAC/BAL paper): CE weighted by a blurred class-edge map E_G"),
    "ce_contrastive": ("segbench.losses.contrastive", "CEContrastive",
                       "CE + pixel contrastive loss on a training-only embedding head (FRM; tau 0.1, lambda 1)"),
}

# loss types whose module has ``needs_embeddings = True`` (checked against the classes by
# tests/test_losses.py); static so that config validation needs no torch
NEEDS_EMBEDDINGS: frozenset[str] = frozenset({"ce_contrastive"})


def available() -> dict[str, str]:
    return {name: desc for name, (_, _, desc) in _REGISTRY.items()}


def loss_class(kind: str):
    if kind not in _REGISTRY:
        raise ValueError(f"loss type '{kind}' is unknown; allowed types: {', '.join(_REGISTRY)}")
    module, cls_name, _ = _REGISTRY[kind]
    return getattr(importlib.import_module(module), cls_name)


def options(kind: str) -> dict[str, object]:
    """Config keys of a loss type with their defaults."""
    params = inspect.signature(loss_class(kind)).parameters
    return {k: p.default for k, p in params.items() if k != "ignore_index"}


def build_loss(spec: dict):
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"loss spec {spec!r} needs a 'type' key; allowed types: {', '.join(_REGISTRY)}")
    kind = spec["type"]
    cls = loss_class(kind)
    given = {k: v for k, v in spec.items() if k not in ("type", "name")}
    allowed = list(options(kind))
    unknown = [k for k in given if k not in allowed]
    if unknown:
        raise ValueError(f"loss '{kind}' has no option {', '.join(map(repr, unknown))}; "
                         f"allowed keys: {', '.join(allowed) or '(none)'}")
    return cls(**given)
