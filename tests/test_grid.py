"""Grids in the config: generated loss and model entries, their names, and their errors."""

import copy
import re
from pathlib import Path

import pytest
import yaml

from segbench.config import ConfigError, expand_grids, load_schema, validate_config

ROOT = Path(__file__).resolve().parents[1]

# The PAC/BAL paper's Table 1 (Yu, POSTECH): kernel, down, size, sigma (None: linear), beta
TABLE1 = [
    ("linear", 1, 15, None, 0.3), ("linear", 2, 15, None, 0.3), ("linear", 2, 15, None, 0.5),
    ("linear", 4, 15, None, 0.5), ("linear", 4, 25, None, 0.5), ("linear", 4, 35, None, 0.5),
    ("gaussian", 1, 15, 1, 0.3), ("gaussian", 2, 15, 1, 0.3), ("gaussian", 4, 15, 1, 0.3),
    ("gaussian", 4, 25, 1, 0.3), ("gaussian", 4, 35, 1, 0.3), ("gaussian", 4, 35, 1, 0.5),
    ("gaussian", 4, 35, 2, 0.5), ("gaussian", 4, 35, 3, 0.5),
]
# Table 2: rates, merge
TABLE2 = [
    ([6, 12, 18], "concat"), ([6, 12, 18, 24], "concat"), ([6, 12, 18], "sum"), ([1, 3, 5], "concat"),
    ([1, 3, 5, 7, 9], "concat"), ([1, 3, 5, 7, 9, 11], "concat"), ([1, 3, 5, 7, 9], "sum"),
]


def docs_block(marker: str) -> dict:
    text = (ROOT / "docs" / "losses.md").read_text()
    m = re.search(rf"<!-- {marker}:.*?-->\s*```yaml\n(.*?)```", text, re.S)
    assert m, f"docs/losses.md has no yaml block after <!-- {marker}: ... -->"
    return yaml.safe_load(m.group(1))


@pytest.fixture
def raw(minimal_config):
    return minimal_config


def test_table1_expands_to_the_papers_rows(raw):
    raw["grids"] = docs_block("table1")["grids"]
    raw["studies"]["table1"] = {"datasets": ["synthetic"], "models": ["unet"], "losses": ["ce", "bal_*"]}
    cfg = validate_config(raw)
    generated = {k: v for k, v in cfg["losses"].items() if k.startswith("bal_")}
    rows = [(e["kernel"], e["down"], e["size"], e.get("sigma"), e["beta"]) for e in generated.values()]
    assert rows == TABLE1
    assert all(e["type"] == "bal" and e["variant"] == "paper" for e in generated.values())
    assert list(generated)[0] == "bal_linear_d1_s15_b0.3"
    assert list(generated)[-1] == "bal_gauss_d4_s35_sg3_b0.5"
    assert cfg["studies"]["table1"]["losses"] == ["ce", *generated]
    assert "grids" not in cfg
    # the names listed in docs/losses.md are the generated ones
    text = (ROOT / "docs" / "losses.md").read_text()
    assert all(f"`{name}`" in text for name in generated)


def test_table2_expands_to_the_papers_variants(raw):
    raw["grids"] = docs_block("table2")["grids"]
    cfg = expand_grids(raw)
    generated = {k: v for k, v in cfg["models"].items() if k.startswith("pac_")}
    assert [(e["params"]["rates"], e["params"]["merge"]) for e in generated.values()] == TABLE2
    assert all(e["arch"] == "deeplabv3_pac" for e in generated.values())
    assert list(generated) == ["pac_r6-12-18_concat", "pac_r6-12-18-24_concat", "pac_r6-12-18_sum",
                               "pac_r1-3-5_concat", "pac_r1-3-5-7-9_concat", "pac_r1-3-5-7-9-11_concat",
                               "pac_r1-3-5-7-9_sum"]
    text = (ROOT / "docs" / "losses.md").read_text()
    assert all(f"`{name}`" in text for name in generated)
    arches = load_schema()["properties"]["models"]["additionalProperties"]["properties"]["arch"]["enum"]
    if "deeplabv3_pac" in arches:  # once the model is registered, the entries validate too
        validated = validate_config(raw)
        assert [validated["models"][k]["params"]["rates"] for k in generated] == [r for r, _ in TABLE2]


def test_product_rows_times_product_and_nested_keys(raw):
    raw["grids"] = {
        "losses": {"sweep": {"base": {"type": "bal", "kernel": "gaussian"},
                             "name_parts": {"sigma": "sg", "beta": "b"},
                             "product": {"sigma": [1.0, 2.0], "beta": [0.3, 0.5]}},
                   "mix": {"base": {"type": "focal"}, "rows": [{"gamma": 1}, {"gamma": 2.5}],
                           "product": {"class_weights": [None, [1, 2]]}}},
        "models": {"u": {"base": {"arch": "unet", "params": {"width": 8}},
                         "product": {"params.depth": [2, 3], "params.bilinear": [True]}}},
    }
    cfg = validate_config(raw)
    assert [k for k in cfg["losses"] if k != "ce"] == [
        "sweep_sg1_b0.3", "sweep_sg1_b0.5", "sweep_sg2_b0.3", "sweep_sg2_b0.5",
        "mix_gamma1_class_weightsnone", "mix_gamma1_class_weights1-2",
        "mix_gamma2.5_class_weightsnone", "mix_gamma2.5_class_weights1-2"]
    assert cfg["losses"]["sweep_sg2_b0.3"] == {"type": "bal", "kernel": "gaussian", "sigma": 2.0, "beta": 0.3}
    assert cfg["models"]["u_depth2_bilineartrue"] == {"arch": "unet", "params": {"width": 8, "depth": 2,
                                                                                 "bilinear": True}}
    assert raw["grids"]["models"]["u"]["base"]["params"] == {"width": 8}  # the input is not modified


def errors(raw) -> str:
    with pytest.raises(ConfigError) as e:
        validate_config(raw)
    return str(e.value)


def with_table1(raw):
    raw = copy.deepcopy(raw)
    raw["grids"] = docs_block("table1")["grids"]
    return raw


def test_bad_value_in_a_row_names_the_grid_key(raw):
    raw = with_table1(raw)
    raw["grids"]["losses"]["bal"]["rows"][3]["kernel"] = "box"
    msg = errors(raw)
    assert "config key 'grids.losses.bal.rows[3].kernel': 'box' is not allowed" in msg
    assert "allowed values: gaussian, linear" in msg and "generated entry 'losses.bal_box_d4_s15_b0.5'" in msg
    raw["grids"]["losses"]["bal"]["rows"][3]["kernel"] = "linear"
    raw["grids"]["losses"]["bal"]["rows"][5]["size"] = 36
    assert "config key 'grids.losses.bal.rows[5].size': 36 is not allowed; expected kernel size" in errors(raw)


def test_typo_in_the_base_is_reported_once(raw):
    raw = with_table1(raw)
    raw["grids"]["losses"]["bal"]["base"]["varaint"] = "paper"
    msg = errors(raw)
    assert msg.count("unknown key 'varaint'") == 1 and "(did you mean 'variant'?)" in msg
    assert "config key 'grids.losses.bal.base': unknown key 'varaint'" in msg
    assert "(generated entries 'losses.bal_" in msg and ", ...)" in msg


def test_bad_product_value_names_its_index(raw):
    raw["grids"] = {"losses": {"s": {"base": {"type": "bal"}, "product": {"down": [1, 3]}}}}
    assert "config key 'grids.losses.s.product.down[1]': 3 is not allowed" in errors(raw)
    raw["grids"] = {"losses": {"s": {"base": {"type": "bal"}, "product": {"sigmaa": [1, 3]}}}}
    msg = errors(raw)
    assert "config key 'grids.losses.s.product': unknown key 'sigmaa' (did you mean 'sigma'?)" in msg
    assert msg.count("unknown key") == 1


@pytest.mark.parametrize("grid,expect", [
    ({"base": {"type": "bal"}}, "'grids.losses.g': a grid needs `rows`, `product` or both"),
    ({"base": {"type": "bal"}, "rows": [{"beta": 0.3}], "product": {"beta": [0.5]}},
     "'grids.losses.g.product.beta': 'beta' is also set by `rows`"),
    ({"base": {"type": "bal"}, "rows": [{"beta": 0.3}, {"beta": 0.3}]},
     "'grids.losses.g.rows[1]': generates 'g_beta0.3' a second time (first from 'grids.losses.g.rows[0]')"),
    ({"base": {"type": "bal"}, "rows": {"beta": 0.3}}, "config key 'grids.losses.g.rows': expected array"),
    ({"base": {"type": "bal"}, "product": {"beta": 0.3}}, "config key 'grids.losses.g.product.beta': expected array"),
    ({"base": {"type": "bal"}, "rows": [{"beta": 0.3}], "name_part": {}}, "unknown key 'name_part'"),
    ({"base": {"type": "ce"}, "rows": [{"label_smoothing": 0.1}], "abbreviations": {"0.1": "a/b"}},
     "generated name 'g_label_smoothinga/b' is not a valid name"),
])
def test_grid_structure_errors(raw, grid, expect):
    raw["grids"] = {"losses": {"g": grid}}
    assert expect in errors(raw)


def test_generated_name_clashing_with_a_written_entry(raw):
    raw["losses"]["g_beta0.3"] = {"type": "ce"}
    raw["grids"] = {"losses": {"g": {"base": {"type": "bal"}, "rows": [{"beta": 0.3}]}}}
    assert "'grids.losses.g': generates 'g_beta0.3', which is already defined under 'losses'" in errors(raw)


def test_study_patterns(raw):
    raw = with_table1(raw)
    raw["studies"]["g"] = {"datasets": ["synthetic"], "models": ["unet"],
                           "losses": ["bal_gauss_d4_s35_*", "bal_gauss_d4_s35_sg3_b0.5", "ce"]}
    cfg = validate_config(raw)
    assert cfg["studies"]["g"]["losses"] == ["bal_gauss_d4_s35_sg1_b0.3", "bal_gauss_d4_s35_sg1_b0.5",
                                             "bal_gauss_d4_s35_sg2_b0.5", "bal_gauss_d4_s35_sg3_b0.5", "ce"]
    raw["studies"]["g"]["losses"] = ["bal_box_*"]
    assert "config key 'studies.g.losses[0]': pattern 'bal_box_*' matches no entry under 'losses'" in errors(raw)


def test_a_config_of_grid_entries_only(raw):
    del raw["losses"]
    raw["grids"] = {"losses": {"l": {"base": {"type": "ce"}, "product": {"label_smoothing": [0.0, 0.1]}}}}
    raw["studies"]["unet_segnet"]["losses"] = ["l_*"]
    cfg = validate_config(raw)
    assert list(cfg["losses"]) == ["l_label_smoothing0", "l_label_smoothing0.1"]
