import copy
from pathlib import Path

import pytest
import yaml

from segbench.config import ConfigError, load_config, validate_config
from segbench.plan import Plan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def raw(minimal_config):
    return minimal_config


def test_default_config_is_valid_and_filled():
    cfg = validate_config(yaml.safe_load((ROOT / "config.yaml").read_text()))
    assert cfg["train"]["optimizer"] in ("adamw", "sgd")
    assert cfg["studies"]["unet_segnet"]["seeds"] == [0]
    assert cfg["mlflow"]["tracking_uri"] is None


def errors_of(raw) -> str:
    with pytest.raises(ConfigError) as e:
        validate_config(raw)
    return str(e.value)


def test_misspelt_key_names_path_and_allowed(raw):
    raw["trian"] = {"epochs": 2}
    msg = errors_of(raw)
    assert "unknown key 'trian'" in msg and "did you mean 'train'" in msg and "allowed keys:" in msg


def test_misspelt_nested_key(raw):
    raw["models"]["unet"]["params"]["widht"] = 8
    msg = errors_of(raw)
    assert "models.unet.params" in msg and "'widht'" in msg and "width" in msg


def test_wrong_type(raw):
    raw["train"]["epochs"] = "four"
    assert "config key 'train.epochs': expected integer, got 'four'" in errors_of(raw)


def test_unknown_architecture_lists_allowed(raw):
    raw["models"]["segnet"]["arch"] = "segnett"
    msg = errors_of(raw)
    assert "models.segnet.arch" in msg and "allowed values: unet, segnet" in msg


def test_unknown_loss_type(raw):
    raw["losses"]["ce"]["type"] = "cross_entropy"
    msg = errors_of(raw)
    assert "losses.ce.type" in msg and "'cross_entropy'" in msg and "allowed values:" in msg


def test_study_names_must_be_defined(raw):
    raw["studies"]["unet_segnet"]["models"].append("deeplab")
    raw["studies"]["unet_segnet"]["datasets"] = ["cityscape"]
    msg = errors_of(raw)
    assert "studies.unet_segnet.models[2]': 'deeplab' is not defined under 'models'" in msg
    assert "allowed values: unet, segnet" in msg
    assert "studies.unet_segnet.datasets[0]': 'cityscape'" in msg


def test_impossible_size(raw):
    raw["train"]["crop"] = [100, 256]
    assert "train.crop[0]" in errors_of(raw)


def test_all_problems_reported_at_once(raw):
    raw["train"]["epochs"] = 0
    raw["eval"]["batchsize"] = 2
    msg = errors_of(raw)
    assert "2 problems" in msg and "train.epochs" in msg and "eval" in msg


def test_load_config_names_the_file(tmp_path, raw):
    bad = copy.deepcopy(raw)
    bad["models"]["unet"]["arch"] = "nope"
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=str(p)):
        load_config(p)


def test_overrides_resolve_in_order(raw):
    raw["datasets"]["synthetic"]["train"] = {"batch_size": 2, "lr": 0.1}
    raw["models"]["unet"]["train"] = {"lr": 0.5}
    plan = Plan(validate_config(raw))
    unet = plan.train_spec("synthetic", "unet")
    segnet = plan.train_spec("synthetic", "segnet")
    assert unet["lr"] == 0.5 and unet["batch_size"] == 2
    assert segnet["lr"] == 0.1 and segnet["batch_size"] == 2
    assert unet["epochs"] == raw["train"]["epochs"]


@pytest.mark.parametrize("value", ["auto", True, False])
def test_channels_last_accepts_auto_true_false(raw, value):
    raw["train"]["channels_last"] = value
    assert validate_config(raw)["train"]["channels_last"] == value


@pytest.mark.parametrize("value", ["yes", "on", 1, None, "true"])
def test_channels_last_rejects_other_values(raw, value):
    raw["train"]["channels_last"] = value
    assert "channels_last" in errors_of(raw)
    bad = copy.deepcopy(raw)
    del bad["train"]["channels_last"]
    bad["models"]["unet"]["train"] = {"channels_last": value}
    assert "models.unet.train" in errors_of(bad)


def test_channels_last_defaults_to_auto_and_a_model_entry_overrides_it(raw):
    plan = Plan(validate_config(copy.deepcopy(raw)))
    assert plan.train_spec("synthetic", "unet")["channels_last"] == "auto"
    raw["train"]["channels_last"] = False
    raw["datasets"]["synthetic"]["train"] = {"channels_last": "auto"}
    raw["models"]["unet"]["train"] = {"channels_last": True}
    plan = Plan(validate_config(raw))
    assert plan.train_spec("synthetic", "unet")["channels_last"] is True       # the model entry wins
    assert plan.train_spec("synthetic", "segnet")["channels_last"] == "auto"   # then the dataset's
    unet = plan.run_spec(plan.find_run("synthetic", "unet", "ce", 0))
    assert unet["train"]["channels_last"] is True  # in the spec the job gets and run.json records


def test_plan_trains_a_run_once_across_studies(raw):
    raw["studies"]["again"] = {"datasets": ["synthetic"], "models": ["unet"], "losses": ["ce"], "seeds": [0, 1]}
    plan = Plan(validate_config(raw))
    keys = [r.key for r in plan.runs]
    assert keys == ["synthetic/unet/ce/s0", "synthetic/segnet/ce/s0", "synthetic/unet/ce/s1"]
    assert plan.studies_of(plan.runs[0]) == ["unet_segnet", "again"]


def test_the_schema_is_package_data_and_names_what_the_catalog_declares():
    from importlib import resources

    from segbench.catalog import ARCHITECTURES, DATASET_SOURCES, LABEL_SETS, LOSSES
    from segbench.config import load_schema

    assert resources.files("segbench").joinpath("schemas", "config.schema.yaml").is_file()
    entries = {k: v["additionalProperties"]["properties"] for k, v in load_schema()["properties"].items()
               if k in ("datasets", "models", "losses")}
    assert entries["models"]["arch"]["enum"] == list(ARCHITECTURES)
    assert entries["losses"]["type"]["enum"] == list(LOSSES)
    assert entries["datasets"]["source"]["enum"] == list(DATASET_SOURCES)
    assert entries["datasets"]["labels"]["enum"] == list(LABEL_SETS) == ["trainId", "category"]


# ----------------------------------------------------------------------------- limits (issue 18, item 8)
def _name(word: str, length: int) -> str:
    """A valid, non-periodic name of ``length`` characters."""
    import hashlib

    return (word + "_" + hashlib.sha256(word.encode()).hexdigest() * 2)[:length]


def test_longest_names_fit_every_path_the_workflow_writes(tmp_path, raw):
    """Names of NAME_MAX characters: every output and log path of the real Snakefile's plan can
    be created on this file system (255-byte names); one character more is refused."""
    import os
    import subprocess
    import sys

    from segbench.config import NAME_MAX

    d, m, loss, s = (_name(w, NAME_MAX) for w in ("dataset", "model", "loss", "study"))
    raw["datasets"] = {d: raw["datasets"]["synthetic"]}
    raw["models"] = {m: raw["models"]["unet"]}
    raw["losses"] = {loss: {"type": "ce"}}
    raw["studies"] = {s: {"datasets": [d], "models": [m], "losses": [loss], "seeds": [4294967295]}}
    raw["cross_study"] = {"datasets": [d]}
    config = tmp_path / "long.yaml"
    config.write_text(yaml.safe_dump(raw))
    bin_dir = Path(sys.executable).parent
    wd = tmp_path / "wd"
    proc = subprocess.run([str(bin_dir / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(wd),
                           "--cores", "1", "-n", "--summary", "--configfile", str(config)],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split("\t") for line in proc.stdout.splitlines()[1:] if "\t" in line]
    paths = {p for row in rows for p in [row[0], *row[3].split(",")] if p.strip() not in ("", "-")}
    assert any(f"/{d}/{m}/{loss}/s4294967295" in p for p in paths) and any(s in p for p in paths)
    for p in paths:  # the file system's own check: OSError "File name too long" if a part is over its limit
        target = wd / p.strip()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    raw["models"] = {m + "x": raw["models"][m]}
    raw["studies"][s]["models"] = [m + "x"]
    assert f"at most {NAME_MAX}" in errors_of(raw)


@pytest.mark.parametrize("name", ["unet" + "x" * 19, "unet" + "x" * 20, "ab" * 20, "b" + "ab" * 19, "m" * 64,
                                  "model_" + "12" * 20, "deeplabv3_pac_r6-12-18_concat", "a-b-" * 16])
def test_a_name_is_refused_where_snakemake_takes_it_for_a_recursion(raw, name):
    from snakemake.io import PeriodicityDetector

    raw["losses"] = {name: {"type": "ce"}}
    raw["studies"]["unet_segnet"]["losses"] = [name]
    periodic = PeriodicityDetector().is_periodic(name) is not None
    if periodic:
        assert f"name '{name}' ends in" in errors_of(raw)
    else:
        assert name in validate_config(raw)["losses"]


def test_the_seed_bound_fits_what_training_gives_torch(raw):
    """The largest seed and epoch count the schema allows make an epoch seed that torch takes."""
    import torch

    from segbench.config import load_schema
    from segbench.engine.train import _epoch_seed

    schema = load_schema()
    top = schema["$defs"]["seed"]["maximum"]
    epochs = schema["$defs"]["train"]["properties"]["epochs"]["maximum"]
    torch.manual_seed(_epoch_seed(top, epochs))
    torch.Generator().manual_seed(_epoch_seed(top, epochs))
    raw["studies"]["unet_segnet"]["seeds"] = [top]
    raw["train"]["epochs"] = epochs
    assert validate_config(copy.deepcopy(raw))["studies"]["unet_segnet"]["seeds"] == [top]
    raw["studies"]["unet_segnet"]["seeds"] = [top + 1]
    assert "studies.unet_segnet.seeds[0]" in errors_of(raw)


def test_merged_entries_do_not_share_what_validation_fills_in(tmp_path):
    """Two studies written with a YAML merge key share the merged values (one Python object);
    the ablation datasets filled in from each study's own datasets stay each study's."""
    config = tmp_path / "merge.yaml"
    config.write_text("""
datasets:
  a: {source: synthetic}
  b: {source: synthetic}
models: {unet: {arch: unet, params: {width: 8}}}
losses: {ce: {type: ce}}
studies:
  first: &first
    datasets: [a]
    models: [unet]
    losses: [ce]
    ablations:
      grid: {table: bal_grid, models: [unet], losses: [ce]}
  second:
    <<: *first
    datasets: [b]
""")
    cfg = load_config(config)
    assert cfg["studies"]["first"]["ablations"]["grid"]["datasets"] == ["a"]
    assert cfg["studies"]["second"]["ablations"]["grid"]["datasets"] == ["b"]
