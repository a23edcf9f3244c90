"""What exists: segbench's architectures, losses and dataset sources, declared once.

Everything that needs to know what exists reads it here:

- the config check (:mod:`segbench.config`): the schema's allowed ``arch``, loss ``type``,
  dataset ``source`` and ``labels`` are filled in from these tables when it is loaded, and
  a study that pairs a loss needing embeddings with a model without them fails at start-up;
- the plan (:mod:`segbench.plan`): a dataset entry's classes, split sizes and evaluation size;
- the registries: :func:`segbench.models.build_model` and :func:`segbench.losses.build_loss`
  import the class named here (only when one is built);
- the data modules (``segbench.data.{source}``): their published split sizes and class counts;
- ``segbench models --list`` and ``segbench check-config --cost``.

A config may also name an architecture or a loss of its own by import path
(``arch: mypkg.models:MyNet``, ``type: mypkg.losses:my_loss``; docs/extending.md):
:func:`load_target` imports it and :func:`call_problem` checks that it can be called with
the config's options. Only then is the user's module imported (it may import torch); the
built-in names never import anything.

Only the standard library is imported, so the Snakefile and ``segbench check-config`` read
this at start-up without torch or numpy. The ImageNet checkpoints have their own torch-free
registry, :data:`segbench.weights.REGISTRY`; an architecture here names only the checkpoint
family its backbone loads (``pretrained``).

tests/test_catalog.py checks every entry against what it describes: the class exists, has
``forward_train`` exactly when flagged ``embeddings`` and a ``pretrained`` option exactly when
it names a family; a loss takes ``embeddings`` exactly when flagged; the class counts are the
lengths of the data modules' class-name lists; the split sizes are the published ones.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from dataclasses import dataclass, field

from segbench.errors import UserError

__all__ = ["Architecture", "Loss", "DatasetSource", "ARCHITECTURES", "LOSSES", "DATASET_SOURCES",
           "LABEL_SETS", "DOWNLOADABLE", "embedding_architectures", "num_classes", "split_images", "eval_size",
           "IMPORT_PATH_PATTERN", "is_import_path", "ImportPathError", "load_target", "call_problem",
           "has_embeddings", "needs_embeddings"]


@dataclass(frozen=True)
class Architecture:
    #: ``module:Class`` of the ``nn.Module``, imported only when a model is built
    target: str
    #: one line, as ``segbench models --list`` shows it
    description: str
    #: the model has ``forward_train(images) -> {"logits", "embeddings"}``, a train-time
    #: embedding head for the losses that need one
    embeddings: bool = False
    #: the ``family`` of :data:`segbench.weights.REGISTRY` checkpoints its ``pretrained``
    #: option loads into the backbone; None: no such option
    pretrained: str | None = None


@dataclass(frozen=True)
class Loss:
    #: ``module:Class`` of the ``nn.Module``, imported only when a loss is built
    target: str
    description: str
    #: called as ``loss(logits, labels, embeddings=...)`` with a model's ``forward_train``
    #: embeddings, so it needs an architecture flagged ``embeddings``
    needs_embeddings: bool = False


@dataclass(frozen=True)
class DatasetSource:
    description: str
    #: label set -> number of classes (the first is the default, ``trainId``)
    classes: dict[str, int]
    #: published images per split; empty for a generated source (its config's ``generate``)
    splits: dict[str, int] = field(default_factory=dict)
    #: [height, width] of the val images as evaluated (and profiled); None: the generated size
    eval_size: tuple[int, int] | None = None
    #: images of the augmented train split (VOC's trainaug, with SBD); None: there is none
    trainaug: int | None = None
    #: made by segbench (``segbench generate``) rather than downloaded
    generated: bool = False
    #: a folder of the user's in the prepared layout (``root:``): neither downloaded nor
    #: generated; its classes and split sizes are read from the folder (segbench.data.folder)
    folder: bool = False


_VAN = "segbench.models.van_fpn"

ARCHITECTURES: dict[str, Architecture] = {
    "unet": Architecture(
        "segbench.models.unet:UNet",
        "U-Net (Ronneberger 2015): 64..1024 channels, transposed-conv up-sampling"),
    "segnet": Architecture(
        "segbench.models.segnet:SegNet",
        "SegNet (Badrinarayanan 2017): VGG16-BN encoder, max-pool-index decoder"),
    "gradnet": Architecture(
        "segbench.models.gradnet:GraDNet",
        "GraDNet (Jia 2022): 11x11/4 stem, Gra layer (windowed 2nd-order differences), asymmetric convs"),
    "deeplabv3": Architecture(
        "segbench.models.deeplab:DeepLabV3",
        "DeepLabV3 (Chen 2017): dilated ResNet-50/101 + ASPP",
        pretrained="torchvision_resnet"),
    "deeplabv3_pac": Architecture(
        "segbench.models.deeplab:DeepLabV3PAC",
        "DeepLabV3 with Pyramid Atrous Convolution (Yu): one 3x3 filter shared by several rates",
        pretrained="torchvision_resnet"),
    "van_fpn_frm": Architecture(
        f"{_VAN}:VanFpnFrm",
        "VAN + FPN + Feature Refinement Module (Wang 2024): DNL block on pooled multi-stage features",
        embeddings=True, pretrained="van"),
    "van_fpn_ppm": Architecture(
        f"{_VAN}:VanFpnPpm",
        "VAN + FPN + PPM on the multi-stage features (FRM paper's ablation)",
        embeddings=True, pretrained="van"),
    "van_fpn_dappm": Architecture(
        f"{_VAN}:VanFpnDappm",
        "VAN + FPN + DDRNet's DAPPM on the multi-stage features (FRM paper's ablation)",
        embeddings=True, pretrained="van"),
    "unet_xception": Architecture(
        "segbench.models.unet_xception:UNetXception",
        "U-Net with an Xception-style separable-conv encoder (Saraceno 2022, Keras example)"),
    "segnet_mobilenet": Architecture(
        "segbench.models.segnet_mobilenet:SegNetMobileNet",
        "SegNet with a MobileNet v1 encoder, no skips (Saraceno 2022, keras-segmentation)"),
}

LOSSES: dict[str, Loss] = {
    "ce": Loss(
        "segbench.losses.ce:CrossEntropy",
        "pixel-wise cross-entropy, ignore 255, optional class weights"),
    "dice": Loss(
        "segbench.losses.dice:Dice",
        "multi-class soft Dice over the batch (GraDNet Eq. 1)"),
    "focal": Loss(
        "segbench.losses.focal:Focal",
        "focal loss (Lin et al. 2017), gamma 2, optional class weights"),
    "bal": Loss(
        "segbench.losses.bal:BoundaryAwareLoss",
        "boundary-aware loss (PAC/BAL paper): CE weighted by a blurred class-edge map E_G"),
    "ce_contrastive": Loss(
        "segbench.losses.contrastive:CEContrastive",
        "CE + pixel contrastive loss on a training-only embedding head (FRM; tau 0.1, lambda 1)",
        needs_embeddings=True),
}

# Cityscapes' 19 trainIds and its 7 scored categories (void ignored); the synthetic source
# writes Cityscapes label ids, so it has both label sets too.
_CITYSCAPES_CLASSES = {"trainId": 19, "category": 7}

DATASET_SOURCES: dict[str, DatasetSource] = {
    "synthetic": DatasetSource(
        "procedural street scenes in the Cityscapes layout, generated on the spot (segbench generate)",
        classes=dict(_CITYSCAPES_CLASSES), generated=True),
    "cityscapes": DatasetSource(
        "Cityscapes fine annotations (a login is needed to download)",
        classes=dict(_CITYSCAPES_CLASSES), splits={"train": 2975, "val": 500, "test": 1525}, eval_size=(1024, 2048)),
    # ADE20K and VOC images vary in size; 512x512 is the papers' crop
    "ade20k": DatasetSource(
        "ADE20K SceneParsing (ADEChallengeData2016)",
        classes={"trainId": 150}, splits={"train": 20210, "val": 2000}, eval_size=(512, 512)),
    "voc": DatasetSource(
        "PASCAL VOC 2012 segmentation, + SBD for trainaug",
        classes={"trainId": 21}, splits={"train": 1464, "val": 1449}, eval_size=(512, 512), trainaug=10582),
    # 1280x720 images: 720 rows padded to 736, the next multiple of 32
    "bdd100k": DatasetSource(
        "BDD100K semantic segmentation (the 10K images), in Cityscapes' trainIds",
        classes={"trainId": 19}, splits={"train": 7000, "val": 1000}, eval_size=(736, 1280)),
    # the classes are the folder's class list: their count is read from it (classes 0 here)
    "folder": DatasetSource(
        "a folder of your own: images/ + labels/ (train ids) per split, or a manifest.csv, and a class list "
        "(docs/extending.md)",
        classes={"trainId": 0}, folder=True),
}

#: every label set a dataset entry may name (``labels:``), in order of first use
LABEL_SETS: tuple[str, ...] = tuple(dict.fromkeys(k for s in DATASET_SOURCES.values() for k in s.classes))
#: the sources fetched from their publishers (each is a module ``segbench.data.{source}``)
DOWNLOADABLE: tuple[str, ...] = tuple(name for name, s in DATASET_SOURCES.items() if not (s.generated or s.folder))


def embedding_architectures() -> list[str]:
    """The architectures with a train-time embedding head."""
    return [name for name, a in ARCHITECTURES.items() if a.embeddings]


def _source(source: str) -> DatasetSource:
    if source not in DATASET_SOURCES:
        raise KeyError(f"unknown dataset source '{source}'; known sources: {', '.join(DATASET_SOURCES)}")
    return DATASET_SOURCES[source]


def num_classes(source: str, labels: str = "trainId") -> int:
    """Classes of a source's label set; known before any data is prepared. The folder source
    has no fixed count: its dataset's class list has it (``segbench.plan.Plan.num_classes``)."""
    if _source(source).folder:
        raise ValueError("the folder source's classes are its dataset's class list: read them with "
                         "segbench.data.folder.read_class_list")
    classes = _source(source).classes
    if labels not in classes:
        raise KeyError(f"dataset source '{source}' has no label set '{labels}'; its label sets: {', '.join(classes)}")
    return classes[labels]


def split_images(source: str, split: str, trainaug: bool = True) -> int:
    """Published images of a real source's ``split``; VOC's train is trainaug (10,582 images)
    unless ``trainaug`` is false. A generated source has no published size (ValueError)."""
    s = _source(source)
    if s.generated:
        raise ValueError(f"the {source} source is generated: its split sizes are the dataset entry's `generate` counts")
    if s.folder:
        raise ValueError("the folder source's split sizes are counted in its folder (segbench.data.folder.count_split)")
    if trainaug and split == "train" and s.trainaug is not None:
        return s.trainaug
    return s.splits[split]


def eval_size(source: str) -> tuple[int, int] | None:
    """[height, width] a real source's val images are evaluated at; None for a generated one."""
    return _source(source).eval_size


# ------------------------------------------------------------------ your own model or loss
#: ``package.module:attribute`` - an architecture or loss of the user's, named in a config
IMPORT_PATH_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
_IMPORT_PATH_RE = re.compile(IMPORT_PATH_PATTERN)


class ImportPathError(UserError, ValueError):
    """An import path (``module:attribute``) of a config that cannot be used."""


def is_import_path(name: str) -> bool:
    """Whether ``name`` (a config's ``arch`` or loss ``type``) is an import path, not a built-in name."""
    return isinstance(name, str) and ":" in name


def load_target(path: str):
    """The object ``module:attribute`` names: a class or function of the user's. ImportPathError
    (the message says what to do) when the path is malformed, the module cannot be imported,
    it has no such attribute or the attribute cannot be called."""
    if not _IMPORT_PATH_RE.match(path):
        raise ImportPathError(f"'{path}' is not an import path; write package.module:Name (e.g. "
                              "mypkg.models:MyNet), or a built-in name")
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise ImportPathError(f"cannot import {module_name} (ModuleNotFoundError: {e}); put the package on "
                                  "PYTHONPATH or install it (pip install -e <your package>)") from None
        raise ImportPathError(f"cannot import {module_name}: it needs {missing}, which is not installed "
                              f"(ModuleNotFoundError: {e}); install it into segbench's environment") from None
    except Exception as e:  # noqa: BLE001 - any error of the user's module is reported with its type
        raise ImportPathError(f"importing {module_name} failed ({e.__class__.__name__}: {e}); fix the module "
                              f"(python -c 'import {module_name}' shows the traceback)") from None
    where = getattr(module, "__file__", None) or module_name
    if not hasattr(module, attr):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        close = difflib.get_close_matches(attr, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ImportPathError(f"module {module_name} ({where}) has no attribute '{attr}'{hint}; "
                              f"its classes and functions: {', '.join(names) or '(none)'}")
    target = getattr(module, attr)
    if not callable(target):
        raise ImportPathError(f"{path} is a {type(target).__name__}, not a class or function; name the class "
                              "(or the function) that builds it")
    return target


def call_problem(path: str, target, args: dict) -> str | None:
    """Why ``target(**args)`` cannot be called (its signature takes no such keyword, or needs
    one that is not given), or None. A target whose signature Python cannot read is not checked."""
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind(**args)
    except TypeError as e:
        shown = ", ".join("num_classes=<n>" if k == "num_classes" else f"{k}={v!r}" for k, v in args.items())
        return (f"{path} cannot be called as {path.partition(':')[2]}({shown}): {e}; its signature is {sig}. "
                "Change the config's params or the signature")
    return None


def has_embeddings(arch: str) -> bool:
    """Whether an architecture (built-in or import path) has ``forward_train`` (a train-time embedding head)."""
    if is_import_path(arch):
        return hasattr(load_target(arch), "forward_train")
    return ARCHITECTURES[arch].embeddings


def needs_embeddings(kind: str) -> bool:
    """Whether a loss type (built-in or import path) is called with a model's embeddings."""
    if is_import_path(kind):
        return bool(getattr(load_target(kind), "needs_embeddings", False))
    return LOSSES[kind].needs_embeddings
