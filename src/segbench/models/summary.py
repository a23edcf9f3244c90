"""The model table of ``segbench models``: parameters and MACs of every architecture at its
paper configuration, beside the figures the papers (or the reference code) give.

Costs are counted without computing anything: the model and its input live on the
``meta`` device, and ``torch.utils.flop_counter`` counts the FLOPs of the operators it
knows (convolutions, matrix products) from their shapes; MACs = FLOPs / 2, the papers'
"GFLOPs" (fvcore's convention). Element-wise operations, normalisation,
pooling and resampling are not counted (fvcore counts some of them; see docs/models.md).
Parameters are those ``forward`` uses (train-only heads left out, models/common.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from segbench.models import available, build_model
from segbench.models.common import count_parameters

STANDARD_SIZE = (512, 1024)


@dataclass(frozen=True)
class PaperSetting:
    classes: int
    size: tuple[int, int] | None     # the paper's input size (multiple of 32), None if not stated
    figure: str                      # what the paper (or the reference code) reports
    source: str


PAPER: dict[str, PaperSetting] = {
    "unet": PaperSetting(2, None, "31.04M, 386.5G @512x1024", "reference PyTorch implementation"),
    "segnet": PaperSetting(21, None, "29.45M, ~326G @512x1024", "reference PyTorch implementation"),
    "gradnet": PaperSetting(150, (512, 512), "22.1 MB", "GraDNet Table 2 (ADE20K, 500x500 crops)"),
    "deeplabv3": PaperSetting(21, (512, 512), "58.63M, 136G @512x1024", "torchvision deeplabv3_resnet101, no aux head"),
    "deeplabv3_pac": PaperSetting(21, (512, 512), "-", "PAC paper (VOC, 513x513 crops): no cost figures"),
    "van_fpn_frm": PaperSetting(19, (1024, 2048), "16.48M, 214.82G", "FRM paper Table 2"),
    "van_fpn_ppm": PaperSetting(19, (1024, 2048), "15.23M, 213.21G", "FRM paper Table 2"),
    "van_fpn_dappm": PaperSetting(19, (1024, 2048), "15.98M, 214.81G", "FRM paper Table 2"),
    "unet_xception": PaperSetting(19, None, "-", "Saraceno 2022 (Cityscapes): no cost figures"),
    "segnet_mobilenet": PaperSetting(19, None, "-", "Saraceno 2022 (Cityscapes): no cost figures"),
}


def count_macs_meta(model: torch.nn.Module, size: tuple[int, int], in_channels: int = 3) -> int:
    """MACs of one forward pass at ``size`` of a model built on the meta device."""
    x = torch.zeros(1, in_channels, *size, device="meta")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() // 2


def model_row(name: str, params: dict | None = None, classes: int | None = None) -> dict:
    setting = PAPER.get(name, PaperSetting(19, None, "-", ""))
    classes = classes or setting.classes
    with torch.device("meta"):
        model = build_model(name, classes, **(params or {})).eval()
    row = {"model": name, "classes": classes, "params": count_parameters(model),
           "macs_512x1024": count_macs_meta(model, STANDARD_SIZE),
           "paper_size": setting.size, "macs_paper_size": None, "paper": setting.figure, "source": setting.source}
    if setting.size is not None:
        same = tuple(setting.size) == STANDARD_SIZE
        row["macs_paper_size"] = row["macs_512x1024"] if same else count_macs_meta(model, setting.size)
    return row


def model_table(names: list[str] | None = None) -> list[dict]:
    return [model_row(n) for n in (names or list(available()))]


def format_table(rows: list[dict], markdown: bool = False) -> str:
    head = ["model", "classes", "params", "GMACs @512x1024", "paper input", "GMACs @paper input", "paper's figure"]
    body = []
    for r in rows:
        size = "x".join(map(str, r["paper_size"])) if r["paper_size"] else "-"
        paper_macs = f"{r['macs_paper_size'] / 1e9:.2f}" if r["macs_paper_size"] is not None else "-"
        body.append([r["model"], str(r["classes"]), f"{r['params'] / 1e6:.2f}M", f"{r['macs_512x1024'] / 1e9:.2f}",
                     size, paper_macs, r["paper"]])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*row) for row in body]
    return "\n".join(lines)
