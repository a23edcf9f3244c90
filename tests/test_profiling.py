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
