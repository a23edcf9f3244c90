"""A profile times the model in the memory format it trains in, and says which."""

import copy
import json

import pytest

from conftest import MINIMAL_CONFIG
from segbench.cli import main


def profile(tmp_path, flag: str) -> dict:
    out = tmp_path / f"{flag}.json"
    spec = json.dumps({"arch": "unet", "params": {"width": 4}})
    assert main(["profile", "--model-spec", spec, "--classes", "3", "--size", "32x64", "--out", str(out),
                 "--warmup", "0", "--iterations", "1", "--threads", "1", "--channels-last", flag]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("flag, expected", [("true", True), ("false", False), ("auto", False)])  # auto: no GPU here
def test_profile_records_the_memory_format_it_timed(tmp_path, flag, expected, capsys):
    p = profile(tmp_path, flag)
    assert p["channels_last"] is expected
    assert ("(channels_last)" in capsys.readouterr().out) is expected
    # the format changes the timing only: parameters and MACs are the model's
    ref = p if flag == "false" else profile(tmp_path, "false")
    assert (p["params"], p["macs"]) == (ref["params"], ref["macs"])


def test_the_profiles_format_is_the_models_training_format():
    from segbench.config import validate_config
    from segbench.plan import Plan

    cfg = copy.deepcopy(MINIMAL_CONFIG)
    cfg["train"] = {**cfg.get("train", {}), "channels_last": True}
    name = next(iter(cfg["models"]))
    cfg["models"]["other"] = {**copy.deepcopy(cfg["models"][name]), "train": {"channels_last": False}}
    plan = Plan(validate_config(cfg))
    assert plan.profile_channels_last(name) is True     # the global setting
    assert plan.profile_channels_last("other") is False  # the model entry's wins
    cfg.pop("train")
    assert Plan(validate_config(cfg)).profile_channels_last(name) == "auto"  # the schema's default


def test_profile_records_peak_memory_of_inference_and_of_a_training_step(tmp_path):
    p = profile(tmp_path, "false")
    assert p["train_peak_batch"] == 2
    assert p["inference_peak_mb"] > 0 and p["train_peak_mb"] > 0
    # a training step at batch 2 keeps every activation for backward, plus gradients and
    # momentum: more than a batch-1 forward pass, which frees each activation once used
    assert p["train_peak_mb"] > p["inference_peak_mb"]
    assert "resident" in p["memory_method"]


def test_peak_memory_sees_a_known_allocation():
    """A 64 MB tensor filled and freed inside the measured call: the CPU measure (peak RSS rise)
    reports it, give or take a few pages (memory freed or reused around the call)."""
    import torch

    from segbench.profiling import peak_memory_mb

    n = 64_000_000 // 4

    def allocate():
        t = torch.ones(n, dtype=torch.float32)
        return float(t[-1])

    allocate()
    mb = peak_memory_mb(allocate, torch.device("cpu"))
    assert 60 <= mb < 64 + 8
    assert peak_memory_mb(lambda: None, torch.device("cpu")) < 8
