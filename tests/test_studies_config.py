"""Studies as the papers' experiments: ablation grids, the paper a study reproduces, the
cross study (config validation and the plan of runs)."""

import pytest

from segbench.config import ConfigError, validate_config
from segbench.plan import Plan


@pytest.fixture
def cfg(minimal_config):
    c = minimal_config
    c["datasets"]["other"] = dict(c["datasets"]["synthetic"])
    c["models"]["pac"] = {"arch": "deeplabv3_pac", "params": {"depth": 50, "width": 4}}
    c["models"]["pac_r6"] = {"arch": "deeplabv3_pac", "params": {"depth": 50, "width": 4, "rates": [6, 12, 18]}}
    c["losses"]["bal"] = {"type": "bal", "size": 9, "paper_row": "gauss-d4-s35-sg3-b0.5"}
    c["losses"]["bal_lin"] = {"type": "bal", "kernel": "linear"}
    c["studies"]["pac_bal"] = {
        "datasets": ["synthetic"], "models": ["unet", "pac"], "losses": ["ce", "bal"], "seeds": [0, 1],
        "ablations": {"bal_grid": {"table": "bal_grid", "models": ["unet"], "losses": ["bal*"]},
                      "pac_variants": {"table": "pac_variants", "models": ["pac_*"], "losses": ["ce"], "seeds": [0]}}}
    return c


def test_ablations_take_the_study_datasets_and_seeds_and_expand_globs(cfg):
    v = validate_config(cfg)
    abl = v["studies"]["pac_bal"]["ablations"]
    assert abl["bal_grid"]["losses"] == ["bal", "bal_lin"] and abl["bal_grid"]["datasets"] == ["synthetic"]
    assert abl["bal_grid"]["seeds"] == [0, 1] and abl["pac_variants"]["seeds"] == [0]
    assert abl["pac_variants"]["models"] == ["pac_r6"] and abl["bal_grid"]["enabled"] is True
    assert v["studies"]["pac_bal"]["paper"] == "pac_bal" and v["studies"]["unet_segnet"]["paper"] == "unet_segnet"


def test_plan_puts_ablation_runs_in_the_study_with_their_groups(cfg):
    plan = Plan(validate_config(cfg))
    runs = {r.key: plan.groups[("pac_bal", r)] for r in plan.studies["pac_bal"]}
    # main: 2 models x 2 losses x 2 seeds = 8; bal_grid adds unet/bal_lin (2 seeds), unet/bal is
    # also a main run; pac_variants adds pac_r6/ce seed 0
    assert len(runs) == 8 + 2 + 1
    assert runs["synthetic/unet/bal/s1"] == ["main", "bal_grid"]
    assert runs["synthetic/unet/bal_lin/s0"] == ["bal_grid"]
    assert runs["synthetic/pac_r6/ce/s0"] == ["pac_variants"]
    spec = plan.study_spec("pac_bal")
    assert spec["paper"] == "pac_bal" and spec["ablations"] == {
        "bal_grid": {"table": "bal_grid", "description": ""}, "pac_variants": {"table": "pac_variants", "description": ""}}


@pytest.mark.parametrize("switch", ["global", "entry"])
def test_ablations_can_be_switched_off(cfg, switch):
    if switch == "global":
        cfg["ablations"] = False
    else:
        cfg["studies"]["pac_bal"]["ablations"]["bal_grid"]["enabled"] = False
    plan = Plan(validate_config(cfg))
    keys = {r.key for r in plan.studies["pac_bal"]}
    assert "synthetic/unet/bal_lin/s0" not in keys
    assert ("synthetic/pac_r6/ce/s0" in keys) == (switch == "entry")
    assert ("bal_grid" in plan.study_spec("pac_bal")["ablations"]) is False


def test_cross_study_takes_every_method_of_the_main_matrices(cfg):
    cfg["cross_study"] = {"datasets": ["other"], "seeds": [3]}
    plan = Plan(validate_config(cfg))
    cross = [r.key for r in plan.studies["cross_study"]]
    # unet_segnet: unet/ce, segnet/ce; pac_bal: unet x (ce, bal), pac x (ce, bal); ablations are not methods
    assert cross == ["other/unet/ce/s3", "other/segnet/ce/s3", "other/unet/bal/s3", "other/pac/ce/s3",
                     "other/pac/bal/s3"]
    assert plan.study_spec("cross_study")["cross"] is True
    run = plan.report_run("cross_study", plan.studies["cross_study"][2])
    assert run["studies"] == ["cross_study"] and run["loss_spec"]["paper_row"] == "gauss-d4-s35-sg3-b0.5"


def test_cross_study_off_by_default_and_explicit_methods(cfg):
    assert "cross_study" not in Plan(validate_config(cfg)).studies
    cfg["cross_study"] = {"datasets": ["synthetic"], "methods": ["segnet/ce", "pac/bal"]}
    plan = Plan(validate_config(cfg))
    assert [r.key for r in plan.studies["cross_study"]] == ["synthetic/segnet/ce/s0", "synthetic/pac/bal/s0"]
    # a run shared by a study and the cross study is trained once
    assert len(plan.runs) == len(set(plan.runs))


def test_paper_row_never_reaches_the_run_spec(cfg):
    plan = Plan(validate_config(cfg))
    run = plan.find_run("synthetic", "unet", "bal", 0)
    assert "paper_row" not in plan.run_spec(run)["loss"]


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c["studies"].__setitem__("cross_study", dict(c["studies"]["unet_segnet"])),
     "'studies.cross_study': the name is reserved"),
    (lambda c: c.__setitem__("cross_study", {"datasets": ["synthetic"], "methods": ["unte/ce"]}),
     "'cross_study.methods[0]': model 'unte' of 'unte/ce' is not defined under 'models' (did you mean 'unet'?)"),
    (lambda c: c.__setitem__("cross_study", {"datasets": ["synthtic"]}),
     "'cross_study.datasets[0]': 'synthtic' is not defined under 'datasets' (did you mean 'synthetic'?)"),
    (lambda c: c["studies"]["pac_bal"]["ablations"]["bal_grid"].__setitem__("table", "bal"),
     "'studies.pac_bal.ablations.bal_grid.table': 'bal' is not allowed"),
    (lambda c: c["studies"]["pac_bal"]["ablations"]["bal_grid"].__setitem__("losses", ["focal_*"]),
     "'studies.pac_bal.ablations.bal_grid.losses[0]': pattern 'focal_*' matches no entry"),
    (lambda c: c["studies"]["pac_bal"].__setitem__("paper", "segformer"),
     "'studies.pac_bal.paper': 'segformer' is not allowed"),
    (lambda c: (c["losses"].__setitem__("con", {"type": "ce_contrastive"}),
                c["studies"]["pac_bal"]["ablations"]["bal_grid"].__setitem__("losses", ["con"])),
     "'studies.pac_bal.ablations.bal_grid.losses': loss 'con' (ce_contrastive) needs pixel embeddings"),
])
def test_bad_study_entries_are_named(cfg, edit, expected):
    edit(cfg)
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    assert expected in str(e.value)
