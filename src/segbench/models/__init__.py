"""Model registry: ``build_model(name, num_classes, **overrides)``.

The architectures are declared in :data:`segbench.catalog.ARCHITECTURES` (name -> module and
class, description, flags); the class is imported only when built, so listing the names
costs nothing.

``name`` may also be an import path ``package.module:Name`` (a config's ``arch:``, see
docs/extending.md): ``Name(num_classes=..., **params)`` must return an ``nn.Module`` whose
``forward`` takes images [N, 3, H, W] (float, normalised) and returns logits [N, C, H, W] at
the input's size. Such a model is checked when it is built, by one forward pass of a
[1, 3, 64, 64] input in eval mode (no gradients, nothing else changed): a wrong output fails
there, naming the model and the output it gave, instead of deep in the training loop.
"""

from __future__ import annotations

import importlib
import inspect

from segbench.catalog import ARCHITECTURES, ImportPathError, call_problem, is_import_path, load_target

#: [height, width] of the check pass of a model named by import path
CHECK_SIZE = (64, 64)


def available() -> dict[str, str]:
    """Architecture names with a one-line description."""
    return {name: a.description for name, a in ARCHITECTURES.items()}


def model_class(name: str):
    if is_import_path(name):
        return load_target(name)
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown model '{name}'; known models: {', '.join(ARCHITECTURES)}")
    module, _, cls = ARCHITECTURES[name].target.partition(":")
    return getattr(importlib.import_module(module), cls)


def build_model(name: str, num_classes: int, **overrides):
    cls = model_class(name)
    if is_import_path(name):
        problem = call_problem(name, cls, {"num_classes": num_classes, **overrides})
        if problem:
            raise ImportPathError(f"model {problem}")
        model = cls(num_classes=num_classes, **overrides)
        check_output(name, model, num_classes)
        return model
    params = inspect.signature(cls).parameters
    unknown = [k for k in overrides if k not in params or k == "num_classes"]
    if unknown:
        allowed = [k for k in params if k != "num_classes"]
        raise TypeError(f"model '{name}' has no option {', '.join(map(repr, unknown))}; options: {', '.join(allowed)}")
    return cls(num_classes=num_classes, **overrides)


def check_output(name: str, model, num_classes: int) -> None:
    """Raise ImportPathError unless ``model`` (built from the import path ``name``) is an
    ``nn.Module`` mapping a [1, 3, H, W] input to logits [1, num_classes, H, W]. The pass
    runs on the model's device (the meta device too) in eval mode, without gradients; the
    model's training mode is restored."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ImportPathError(f"model {name} returned a {type(model).__name__}, not a torch.nn.Module; "
                              "the class (or function) must build the network")
    first = next(model.parameters(), None)
    if first is None:
        first = next(model.buffers(), None)
    device = first.device if first is not None else torch.device("cpu")
    h, w = CHECK_SIZE
    x = torch.zeros(1, 3, h, w, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # noqa: BLE001 - reported with the model's name and the input
        if device.type == "meta":
            raise  # shapes only (the cost estimate): its caller says what failing there means
        raise ImportPathError(f"model {name} failed on a [1, 3, {h}, {w}] input ({e.__class__.__name__}: {e}); "
                              "forward must take images [N, 3, H, W] (H, W multiples of 32) and return logits "
                              "[N, C, H, W]") from e
    finally:
        model.train(was_training)
    want = (1, num_classes, h, w)
    if not isinstance(out, torch.Tensor):
        raise ImportPathError(f"model {name} returned a {type(out).__name__} for a [1, 3, {h}, {w}] input; "
                              f"forward must return one logits tensor [N, C, H, W], here {list(want)} "
                              "(a model with a train-time head returns it from forward_train, see docs/extending.md)")
    if tuple(out.shape) != want:
        raise ImportPathError(f"model {name} returned logits of shape {list(out.shape)} for a [1, 3, {h}, {w}] "
                              f"input; expected {list(want)} ([N, num_classes, H, W] at the input's size, "
                              f"num_classes = {num_classes}): up-sample the logits to the input's size "
                              "(F.interpolate) and give the classifier num_classes channels")
    if not out.dtype.is_floating_point:
        raise ImportPathError(f"model {name} returned {out.dtype} logits; forward must return float logits")


def options(name: str) -> dict[str, object]:
    """The constructor options of an architecture (what a config's ``params`` may set) with
    their defaults, ``num_classes`` excluded."""
    params = inspect.signature(model_class(name)).parameters
    return {k: p.default for k, p in params.items() if k != "num_classes"}
