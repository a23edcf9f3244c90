"""segbench.catalog, the one declaration of what exists, against what it describes: the model
and loss classes themselves, the data modules' class-name lists, the published split sizes."""

import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segbench import catalog
from segbench.catalog import ARCHITECTURES, DATASET_SOURCES, LOSSES
from segbench.models import build_model, model_class, options
from segbench.losses import loss_class

SRC = Path(__file__).resolve().parents[1] / "src"


def test_the_catalog_and_its_readers_import_nothing_heavy():
    """The Snakefile and `segbench check-config` read the catalog through the config check and
    the plan at start-up: the standard library and PyYAML only, no numpy, no torch."""
    code = ("import sys; before = set(sys.modules); import segbench.catalog; "
            "only = sorted(m for m in set(sys.modules) - before if m.split('.')[0] != 'segbench' "
            "and m.split('.')[0] not in sys.stdlib_module_names); "
            "import segbench.config, segbench.plan, segbench.models, segbench.losses, segbench.weights; "
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'torch', 'PIL', 'mlflow'}); "
            "print(__import__('json').dumps([only, heavy]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(SRC)))
    assert json.loads(out.stdout) == [[], []]


# ------------------------------------------------------------------ architectures
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_an_architecture_has_forward_train_exactly_when_flagged_embeddings(name):
    cls = model_class(name)
    assert ARCHITECTURES[name].target == f"{cls.__module__}:{cls.__name__}"
    assert ARCHITECTURES[name].description
    assert hasattr(cls, "forward_train") == ARCHITECTURES[name].embeddings


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_an_architecture_loads_checkpoints_of_the_family_it_names(name):
    from segbench.models.pretrained import backbone_arch
    from segbench.weights import REGISTRY

    family = ARCHITECTURES[name].pretrained
    assert ("pretrained" in options(name)) == (family is not None)
    if family is None:
        return
    assert family in {w.family for w in REGISTRY.values()}
    with torch.device("meta"):  # the paper's configuration, shapes only
        model = build_model(name, 19)
    assert backbone_arch(model.get_submodule("backbone"))[0] == family


def test_embedding_architectures_are_the_flagged_ones():
    assert catalog.embedding_architectures() == ["van_fpn_frm", "van_fpn_ppm", "van_fpn_dappm"]


# ------------------------------------------------------------------ losses
@pytest.mark.parametrize("kind", list(LOSSES))
def test_a_loss_takes_embeddings_exactly_when_flagged(kind):
    cls = loss_class(kind)
    assert LOSSES[kind].target == f"{cls.__module__}:{cls.__name__}"
    takes = "embeddings" in inspect.signature(cls.forward).parameters
    assert takes == LOSSES[kind].needs_embeddings
    # the training loop asks the built loss whether to call forward_train
    assert bool(getattr(cls, "needs_embeddings", False)) == LOSSES[kind].needs_embeddings


# ------------------------------------------------------------------ dataset sources
def _class_names():
    from segbench.data import ade20k, voc
    from segbench.data.cityscapes_labels import CATEGORY_CLASSES, TRAIN_CLASSES

    cityscapes = {"trainId": TRAIN_CLASSES, "category": CATEGORY_CLASSES}
    return {"synthetic": cityscapes, "cityscapes": cityscapes, "ade20k": {"trainId": ade20k.CLASSES},
            "voc": {"trainId": voc.CLASSES}, "bdd100k": {"trainId": TRAIN_CLASSES}}  # BDD100K: Cityscapes' trainIds


def test_class_counts_are_the_lengths_of_the_class_name_lists():
    names = _class_names()
    fixed = {source: entry for source, entry in DATASET_SOURCES.items() if not entry.folder}
    assert list(names) == list(fixed)
    for source, entry in fixed.items():
        assert {k: len(v) for k, v in names[source].items()} == entry.classes, source
        for labels in entry.classes:
            assert catalog.num_classes(source, labels) == len(names[source][labels])
    assert catalog.LABEL_SETS == ("trainId", "category")
    with pytest.raises(KeyError, match="source 'ade20k' has no label set 'category'; its label sets: trainId"):
        catalog.num_classes("ade20k", "category")
    # a folder of one's own has the classes of its class list (tests/test_extending.py)
    assert [s for s, e in DATASET_SOURCES.items() if e.folder] == ["folder"]
    with pytest.raises(ValueError, match="the folder source's classes are its dataset's class list"):
        catalog.num_classes("folder")


def test_split_sizes_are_the_published_ones():
    """Published split sizes: Cityscapes 2975/500/1525, ADE20K 20210/2000, VOC 2012 1464/1449 and
    trainaug (VOC train + SBD train + SBD val - VOC val) 10,582, BDD100K 7000/1000."""
    want = {"cityscapes": (2975, 500), "ade20k": (20210, 2000), "voc": (10582, 1449), "bdd100k": (7000, 1000)}
    assert {s: (catalog.split_images(s, "train"), catalog.split_images(s, "val")) for s in want} == want
    assert catalog.split_images("cityscapes", "test") == 1525
    assert catalog.split_images("voc", "train", trainaug=False) == 1464
    with pytest.raises(ValueError, match="generated"):
        catalog.split_images("synthetic", "train")


def test_evaluation_sizes():
    """Cityscapes at its native 1024x2048; ADE20K and VOC (images of varying size) at the papers'
    512x512 crop; BDD100K's 1280x720 with the rows padded to the next multiple of 32."""
    from segbench.data.bdd100k import IMAGE_SIZE

    width, height = IMAGE_SIZE
    assert catalog.eval_size("bdd100k") == (math.ceil(height / 32) * 32, width) == (736, 1280)
    assert catalog.eval_size("cityscapes") == (1024, 2048)
    assert catalog.eval_size("ade20k") == catalog.eval_size("voc") == (512, 512)
    assert catalog.eval_size("synthetic") is None  # the generated size


def test_every_downloadable_source_has_a_data_module_with_its_archives():
    from segbench.data.download import SOURCES, archives_of

    assert SOURCES == catalog.DOWNLOADABLE == ("cityscapes", "ade20k", "voc", "bdd100k")
    assert all(archives_of(s) for s in SOURCES)
