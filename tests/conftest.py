import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("SEGBENCH_NO_PROGRESS", "1")


import pytest  # noqa: E402


def tiny_run_spec(model_params: dict | None = None, loss: dict | None = None, epochs: int = 2) -> dict:
    """The resolved spec of one run on the tiny synthetic dataset (64x128), as the planner
    would hand it to ``segbench train``: a width-4 U-Net, CE unless ``loss`` says otherwise."""
    from segbench.config import validate_config
    from segbench.plan import Plan

    loss = loss or {"type": "ce"}
    cfg = validate_config({
        "datasets": {"tiny": {"source": "synthetic", "generate": {"train": 6, "val": 2, "height": 64, "width": 128}}},
        "models": {"unet": {"arch": "unet", "params": model_params or {"width": 4}}},
        "losses": {loss["type"]: loss},
        "train": {"epochs": epochs, "batch_size": 2, "crop": [64, 128], "workers": 0, "threads": 1},
        "studies": {"s": {"datasets": ["tiny"], "models": ["unet"], "losses": [loss["type"]]}},
    })
    plan = Plan(cfg)
    return plan.run_spec(plan.runs[0])


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """6 train / 2 val synthetic scenes at 64x128, prepared like Cityscapes (seconds)."""
    from segbench.data.cityscapes import prepare_cityscapes
    from segbench.data.synthetic import generate

    root = tmp_path_factory.mktemp("tiny-synthetic")
    generate(root / "raw", seed=0, splits={"train": 6, "val": 2}, height=64, width=128, progress=False)
    prepare_cityscapes(root / "raw", root / "prepared", progress=False)
    return root / "prepared"


# A small self-contained config for tests of the config machinery: independent of the
# default config.yaml, whose studies change as the benchmark grows.
MINIMAL_CONFIG = {
    "datasets": {"synthetic": {"source": "synthetic", "labels": "trainId",
                               "generate": {"seed": 0, "train": 160, "val": 40, "height": 128, "width": 256}}},
    "models": {"unet": {"arch": "unet", "params": {"width": 16}},
               "segnet": {"arch": "segnet", "params": {"width": 16}}},
    "losses": {"ce": {"type": "ce"}},
    "train": {"epochs": 6, "batch_size": 4, "crop": [128, 256]},
    "eval": {"batch_size": 4, "samples": 4},
    "profile": {"warmup": 3, "iterations": 10},
    "mlflow": {"enabled": True, "tracking_uri": None},
    "studies": {"unet_segnet": {"datasets": ["synthetic"], "models": ["unet", "segnet"], "losses": ["ce"],
                                "seeds": [0]}},
}


@pytest.fixture
def minimal_config():
    import copy

    return copy.deepcopy(MINIMAL_CONFIG)
