"""Loss registry: ``build_loss(spec)`` from a config mapping such as ``{type: ce}``.

Every loss is a plain ``nn.Module`` called as ``loss(logits, labels)`` (labels [N, H, W],
255 = ignore, carrying no loss). A loss with ``needs_embeddings = True`` is called as
``loss(logits, labels, embeddings=...)`` in training, with the embeddings of
``model.forward_train``. Options are checked when the loss is built: an unknown key or a
bad value fails naming the key and the allowed values. docs/losses.md describes each loss.

The loss types are declared in :data:`segbench.catalog.LOSSES` (type -> module and class,
description, ``needs_embeddings``); importing this module costs nothing (no torch).
"""

from __future__ import annotations

import importlib
import inspect

from segbench.catalog import LOSSES


def available() -> dict[str, str]:
    return {name: loss.description for name, loss in LOSSES.items()}


def loss_class(kind: str):
    if kind not in LOSSES:
        raise ValueError(f"loss type '{kind}' is unknown; allowed types: {', '.join(LOSSES)}")
    module, _, cls_name = LOSSES[kind].target.partition(":")
    return getattr(importlib.import_module(module), cls_name)


def options(kind: str) -> dict[str, object]:
    """Config keys of a loss type with their defaults."""
    params = inspect.signature(loss_class(kind)).parameters
    return {k: p.default for k, p in params.items() if k != "ignore_index"}


def build_loss(spec: dict):
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"loss spec {spec!r} needs a 'type' key; allowed types: {', '.join(LOSSES)}")
    kind = spec["type"]
    cls = loss_class(kind)
    given = {k: v for k, v in spec.items() if k not in ("type", "name")}
    allowed = list(options(kind))
    unknown = [k for k in given if k not in allowed]
    if unknown:
        raise ValueError(f"loss '{kind}' has no option {', '.join(map(repr, unknown))}; "
                         f"allowed keys: {', '.join(allowed) or '(none)'}")
    return cls(**given)
