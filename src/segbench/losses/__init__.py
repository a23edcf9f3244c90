"""Loss registry: ``build_loss(spec)`` from a config mapping such as ``{type: ce}``.

Every loss is a plain ``nn.Module`` called as ``loss(logits, labels)`` (labels [N, H, W],
255 = ignore, carrying no loss). A loss with ``needs_embeddings = True`` is called as
``loss(logits, labels, embeddings=...)`` in training, with the embeddings of
``model.forward_train``. Options are checked when the loss is built: an unknown key or a
bad value fails naming the key and the allowed values. docs/losses.md describes each loss.

The loss types are declared in :data:`segbench.catalog.LOSSES` (type -> module and class,
description, ``needs_embeddings``); importing this module costs nothing (no torch).

A loss of the user's is named by import path, ``{type: package.module:name, params: {...}}``
(docs/extending.md): ``name(**params)`` returns the loss, an ``nn.Module`` or any callable
``loss(logits, labels) -> scalar tensor`` (wrapped into an ``nn.Module`` here), which must
leave out the pixels labelled 255. With ``needs_embeddings = True`` on the class (or on what
it returns), it is called with ``embeddings=`` as above.
"""

from __future__ import annotations

import importlib
import inspect

from segbench.catalog import LOSSES, ImportPathError, call_problem, is_import_path, load_target


def available() -> dict[str, str]:
    return {name: loss.description for name, loss in LOSSES.items()}


def loss_class(kind: str):
    if is_import_path(kind):
        return load_target(kind)
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
    if is_import_path(kind):
        return _build_own_loss(kind, spec)
    cls = loss_class(kind)
    given = {k: v for k, v in spec.items() if k not in ("type", "name")}
    allowed = list(options(kind))
    unknown = [k for k in given if k not in allowed]
    if unknown:
        raise ValueError(f"loss '{kind}' has no option {', '.join(map(repr, unknown))}; "
                         f"allowed keys: {', '.join(allowed) or '(none)'}")
    return cls(**given)


def _build_own_loss(path: str, spec: dict):
    """The loss ``path(**spec["params"])`` of an import path, as an ``nn.Module``."""
    import torch

    extra = [k for k in spec if k not in ("type", "params", "name")]
    if extra:
        raise ImportPathError(f"loss {path}: unknown key {', '.join(map(repr, extra))}; a loss named by import "
                              "path takes its options under `params:`")
    params = dict(spec.get("params") or {})
    target = load_target(path)
    problem = call_problem(path, target, params)
    if problem:
        raise ImportPathError(f"loss {problem}")
    loss = target(**params)
    if isinstance(loss, torch.nn.Module):
        return loss
    if not callable(loss):
        raise ImportPathError(f"loss {path} returned a {type(loss).__name__}; it must return the loss: an "
                              "nn.Module or a function (logits, labels) -> scalar tensor")
    return _as_module(loss, getattr(loss, "needs_embeddings", getattr(target, "needs_embeddings", False)))


def _as_module(fn, needs_embeddings: bool):
    """A plain function ``(logits, labels[, embeddings=]) -> scalar`` as an ``nn.Module`` (the
    training loop moves the loss to its device). The class is defined here, so that importing
    this module does not import torch."""
    import torch

    class FunctionLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fn = fn
            self.needs_embeddings = bool(needs_embeddings)

        def forward(self, logits, labels, **kwargs):
            return self.fn(logits, labels, **kwargs)

    return FunctionLoss()
