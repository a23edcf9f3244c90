"""`segbench check-config --cost`: the compute a config plans, before anything runs.

The MACs of a forward pass are checked against a count by hand, the per-run figure against
MACs x images x epochs x 3 (+ MACs at the eval size x val images) worked out here, the image
counts against the published split sizes (the datasets' papers and sites), and a run cited by several
studies is counted once.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MINIMAL_CONFIG
from segbench import cost

ROOT = Path(__file__).resolve().parents[1]


def plan_of(cfg):
    from segbench.config import validate_config
    from segbench.plan import Plan

    return Plan(validate_config(cfg))


def unet_w1_d1_macs(h: int, w: int, classes: int = 19) -> int:
    """U-Net at width 1, depth 1 (convs without bias, 'same' padding), by hand, per layer:
    inc 3x3 3->1 and 1->1 at HxW; down (after a 2x2 pool) 3x3 1->2 and 2->2 at H/2 x W/2; up a
    2x2 stride-2 transposed conv 2->1 (each output pixel one tap of 2 input channels); 3x3
    2->1 and 1->1 at HxW on the concatenation; the 1x1 head 1->classes."""
    full, half = h * w, (h // 2) * (w // 2)
    inc = full * (3 * 9 * 1 + 1 * 9 * 1)
    down = half * (1 * 9 * 2 + 2 * 9 * 2)
    up = full * 2 * 1
    dec = full * (2 * 9 * 1 + 1 * 9 * 1)
    head = full * 1 * classes
    return inc + down + up + dec + head


TINY = {"arch": "unet", "params": {"width": 1, "depth": 1}}


def test_macs_of_a_forward_pass_match_a_hand_count():
    assert unet_w1_d1_macs(32, 64) == 32 * 64 * 97.5  # 36 + 13.5 + 2 + 27 + 19 per pixel
    assert cost.count_macs("unet", TINY["params"], 19, (32, 64)) == unet_w1_d1_macs(32, 64)
    assert cost.count_macs("unet", TINY["params"], 5, (64, 128)) == unet_w1_d1_macs(64, 128, classes=5)
    # a `pretrained` option changes no MAC and loads nothing (U-Net has no such option: it is dropped)
    with_pretrained = {**TINY["params"], "pretrained": True}
    assert cost.count_macs("unet", with_pretrained, 19, (32, 64)) == unet_w1_d1_macs(32, 64)


def test_meta_count_equals_a_real_forward_pass():
    """The meta-device count is that of a real pass on the CPU (a wider U-Net, no hand count)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from segbench.models import build_model

    torch.manual_seed(0)
    model = build_model("unet", 4, width=2, depth=2).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(1, 3, 32, 64))
    assert cost.count_macs("unet", {"width": 2, "depth": 2}, 4, (32, 64)) == counter.get_total_flops() // 2


@pytest.fixture
def cfg():
    c = copy.deepcopy(MINIMAL_CONFIG)
    c["datasets"] = {"syn": {"source": "synthetic",
                             "generate": {"seed": 0, "train": 6, "val": 2, "height": 64, "width": 128}}}
    c["train"].update(crop=[32, 64], epochs=3)
    c["models"] = {"tiny": copy.deepcopy(TINY),
                   "tiny_long": {**copy.deepcopy(TINY), "train": {"epochs": 5}}}
    c["studies"] = {"a": {"datasets": ["syn"], "models": ["tiny"], "losses": ["ce"], "seeds": [0]},
                    "b": {"datasets": ["syn"], "models": ["tiny", "tiny_long"], "losses": ["ce"], "seeds": [0]}}
    c["cross_study"] = {"enabled": False}
    return c


def test_run_cost_is_macs_times_images_times_epochs_times_3_plus_evaluation(cfg):
    costs = {c.key: c for c in cost.run_costs(plan_of(cfg))}
    crop, full = unet_w1_d1_macs(32, 64), unet_w1_d1_macs(64, 128)  # crop 32x64; eval at the generated 64x128
    c = costs["syn/tiny/ce/s0"]
    assert (c.crop, c.eval_size, c.train_images, c.val_images, c.epochs) == ((32, 64), (64, 128), 6, 2, 3)
    assert c.train_macs_per_image == crop and c.eval_macs_per_image == full
    assert c.train_macs == crop * 6 * 3 * 3
    assert c.eval_macs == full * 2
    assert c.total_macs == crop * 6 * 3 * 3 + full * 2
    # the model's own train block: 5 epochs
    assert costs["syn/tiny_long/ce/s0"].total_macs == crop * 6 * 5 * 3 + full * 2
    # 1 MAC = 2 FLOPs; at 50 TFLOP/s
    assert cost.gpu_hours(1e15, 50) == pytest.approx(2e15 / 50e12 / 3600)


def test_a_run_of_several_studies_is_counted_once(cfg):
    plan = plan_of(cfg)
    calls = []

    def fake(arch, params, classes, size):
        calls.append((arch, tuple(size)))
        return 10**9 if tuple(size) == (32, 64) else 4 * 10**9

    costs = cost.run_costs(plan, count=fake)
    # syn/tiny/ce/s0 is in studies a and b: one run
    assert [c.key for c in costs] == ["syn/tiny/ce/s0", "syn/tiny_long/ce/s0"]
    assert costs[0].studies == ("a", "b")
    # two models with the same arch and params, two sizes: each distinct count made once
    assert sorted(calls) == [("unet", (32, 64)), ("unet", (64, 128))]
    one = 10**9 * 6 * 3 * 3 + 4 * 10**9 * 2   # 54 + 8 = 62 GMAC
    long = 10**9 * 6 * 5 * 3 + 4 * 10**9 * 2  # 90 + 8 = 98 GMAC
    assert [c.total_macs for c in costs] == [one, long]
    text = cost.format_costs(plan, costs, tflops=50)
    table = [ln for ln in text.splitlines() if ln.startswith("syn/")]
    assert [ln.split()[0] for ln in table] == ["syn/tiny/ce/s0", "syn/tiny_long/ce/s0"]
    assert one + long == 160 * 10**9  # = 320 GFLOP; totals in GMAC (the median run is under 1 TMAC)
    assert "Total: 160.00 GMAC" in text and "= 320.00 GFLOP" in text
    assert "2 runs, 1 of them cited by more than one study (counted once)" in text
    by_study = dict(re.findall(r"(?m)^  ([ab]) +\d+ +(\S+) ", text))
    assert by_study == {"a": "62.00", "b": "160.00"}  # the shared run in both studies' lines
    words = " ".join(text.split())
    assert "1 MAC = 2 FLOPs" in words and "estimate" in words and "validation during training" in words


def test_real_datasets_use_the_published_split_sizes():
    """Published split sizes: Cityscapes 2975/500, ADE20K 20210/2000, VOC trainaug 10582 (train 1464)
    / val 1449, BDD100K 7000/1000; evaluation at Cityscapes' 1024x2048, 512x512 for ADE20K and
    VOC, BDD100K's 720 rows padded to 736."""
    c = copy.deepcopy(MINIMAL_CONFIG)
    c["datasets"] = {"cs": {"source": "cityscapes"}, "ade": {"source": "ade20k"},
                     "voc": {"source": "voc"}, "voc_plain": {"source": "voc", "trainaug": False},
                     "bdd": {"source": "bdd100k"}}
    c["models"] = {"tiny": copy.deepcopy(TINY)}
    c["studies"] = {"s": {"datasets": list(c["datasets"]), "models": ["tiny"], "losses": ["ce"], "seeds": [0]}}
    c["cross_study"] = {"enabled": False}
    costs = {c.key.split("/")[0]: c for c in cost.run_costs(plan_of(c), count=lambda *a: 1)}
    got = {k: (v.train_images, v.val_images, v.eval_size) for k, v in costs.items()}
    assert got == {"cs": (2975, 500, (1024, 2048)), "ade": (20210, 2000, (512, 512)),
                   "voc": (10582, 1449, (512, 512)), "voc_plain": (1464, 1449, (512, 512)),
                   "bdd": (7000, 1000, (736, 1280))}


def test_throughput_must_be_positive():
    from segbench.cli import build_parser

    p = build_parser()
    assert p.parse_args(["check-config", "x.yaml", "--cost"]).throughput_tflops == 50.0
    assert p.parse_args(["check-config", "--cost", "--throughput-tflops", "312"]).throughput_tflops == 312.0
    for bad in ("0", "-5", "fast"):
        with pytest.raises(SystemExit):
            p.parse_args(["check-config", "--cost", "--throughput-tflops", bad])


def test_check_config_cost_of_the_paper_config():
    from segbench.config import load_config
    from segbench.plan import Plan

    path = ROOT / "workflow" / "configs" / "paper.yaml"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), SEGBENCH_NO_PROGRESS="1")
    proc = subprocess.run([sys.executable, "-m", "segbench", "check-config", str(path), "--cost"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    plan = Plan(load_config(path))
    rows = [ln.split()[0] for ln in out.splitlines() if "/s" in ln.split(" ", 1)[0]]
    assert rows == [r.key for r in plan.runs]  # every run once, in the plan's order
    total = float(re.search(r"(?m)^Total: ([\d.]+) PMAC", out).group(1))
    hours = float(re.search(r"(?m)^GPU-hours: ([\d.]+) at 50 effective TFLOP/s", out).group(1))
    assert total > 0 and hours == pytest.approx(2 * total * 1e15 / 50e12 / 3600, abs=0.05)
    assert f"{len(plan.runs)} runs" in out
    assert "cityscapes (cityscapes): 2975 train / 500 val images" in out


def test_train_runtime_is_twice_the_estimated_gpu_time_plus_a_quarter_hour_within_bounds():
    """The cluster time limit of a training job (the train rule's runtime on SLURM), by hand:
    1 GPU-hour at 50 TFLOP/s is 9e16 MACs -> 2 x 60 + 15 = 135 minutes; tiny runs get the
    2-hour floor, huge ones the 2-day ceiling."""
    from segbench.cost import RunCost, train_runtime_minutes

    def cost(total_macs):  # 1 train image x 1 epoch x 3 passes, no evaluation
        return RunCost(key="k", studies=("s",), crop=(1, 1), train_macs_per_image=total_macs // 3, train_images=1,
                       epochs=1, eval_size=(1, 1), eval_macs_per_image=0, val_images=0)

    assert train_runtime_minutes(cost(9 * 10**16)) == 135
    assert train_runtime_minutes(cost(3)) == 120
    assert train_runtime_minutes(cost(9 * 10**18)) == 2880
    assert train_runtime_minutes(cost(9 * 10**16), tflops=25) == 2 * 120 + 15
