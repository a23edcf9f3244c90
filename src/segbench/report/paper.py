"""The papers' tables in their own form, with the published figures beside ours.

A study of a paper (``study["paper"]`` one of ``PAPERS``) gets, under ``<study>/tables/``:

- ``paper_<table>.csv`` and ``paper_<table>.md`` for each of the paper's tables that some of
  the study's runs fill, one pair per (table, dataset); the dataset is appended to the name
  (``paper_<table>_<dataset>``) only when runs on several datasets fill the same table;
- ``paper_tables.md``: every table above, under headings, in the paper's order.

A study with ``paper: None`` gets nothing. Nothing here imports torch, mlflow or matplotlib.

Tables (``TABLES``; published figures from the papers' tables, each typed in once below)

============================  =========================================================
id                            filled by
============================  =========================================================
``gradnet_t2``                GraDNet Table 2 (ADE20K): runs whose dataset source is ade20k
``gradnet_t3``                GraDNet Table 3 (Cityscapes, 8 categories): every other run
                              (synthetic and cityscapes: the synthetic scenes are
                              Cityscapes-like street scenes)
``pac_bal_t3``                PAC + BAL Table 3 (VOC val mIoU): runs of the main matrix
``pac_bal_t1``                PAC + BAL Table 1 (BAL grid, Δ mIoU): runs of an ablation whose
                              spec says ``table: bal_grid``
``pac_bal_t2``                PAC + BAL Table 2 (PAC variants, Δ mIoU): runs of an ablation
                              whose spec says ``table: pac_variants``
``frm_t1``, ``frm_t2``        FRM Tables 1 (Cityscapes, with peers) and 2 (FRM / PPM / DAPPM):
                              every run not on bdd100k
``frm_t3``                    FRM Table 3 (BDD100K val): runs whose dataset source is bdd100k
``unet_segnet_final``         U-Net vs SegNet: our final-epoch train vs val loss, mIoU and
                              accuracy (the report publishes curves only, its Figure 8)
============================  =========================================================

Which table a run fills depends only on the run dicts (``dataset_spec["source"]``, else the
dataset's name when it is a source name; ``groups``) and the study spec, never on a run's
files: ``expected_paper_outputs`` and ``write_paper_tables`` share ``_route``, so a missing
or broken run file cannot change the set of outputs (it makes the report fail instead).

Matching a run to a paper row
-----------------------------
A row is a (model id, loss id) pair; a loss id of None means "any loss" (GraDNet's and FRM's
tables compare architectures). A run's ids come from its ``model_spec`` / ``loss_spec``:

- an explicit ``paper_row`` in the spec is the id (it overrides the parameters: a scaled-down
  config, e.g. a BAL kernel of 9 taps, says which row it stands for);
- otherwise the id is derived from the parameters:

  - model ``arch``: deeplabv3 -> ``deeplabv3``; gradnet -> ``gradnet``; unet -> ``unet``;
    van_fpn_frm -> ``frm``; van_fpn_ppm -> ``ppm``; van_fpn_dappm -> ``dappm``;
    deeplabv3_pac -> ``r<rates joined by ->-<merge>`` from ``params.rates`` and
    ``params.merge``, defaults ``PAC_DEFAULTS`` ([1, 3, 5, 7, 9], "sum"), e.g.
    ``r1-3-5-7-9-sum``, ``r6-12-18-concat``;
  - loss ``type``: bal -> ``gauss-d<down>-s<size>-sg<sigma>-b<beta>`` (gaussian) or
    ``lin-d<down>-s<size>-b<beta>`` (linear) from the keys kernel, down, size, sigma, beta
    with ``BAL_DEFAULTS`` (gaussian, 4, 35, 3.0, 0.5) for keys left out, e.g.
    ``gauss-d4-s35-sg3-b0.5``, ``lin-d4-s35-b0.5``; any other type -> the type (``ce``, ...).

Valid ``paper_row`` ids (``model_row_ids()``, ``loss_row_ids()``):

- models: ``deeplabv3``; the PAC variants of PAC + BAL Table 2 (``r6-12-18-concat``,
  ``r6-12-18-24-concat``, ``r6-12-18-sum``, ``r1-3-5-concat``, ``r1-3-5-7-9-concat``,
  ``r1-3-5-7-9-11-concat``, ``r1-3-5-7-9-sum``); GraDNet's ``gradnet``, ``deep-snake``,
  ``unet``, ``panet``, ``fcis``, ``ese``, ``sts``; FRM's ``sfnet-r18``, ``segformer-b1``,
  ``nrd-r50``, ``bialignnet``, ``sfanet-r18``, ``ifa-r50``, ``rtformer-b``, ``ddrnet-23``,
  ``ddrnet-39``, ``pidnet-m``, ``frm``, ``ppm``, ``dappm``, ``hanet-r101``, ``pfnet-r50``;
- losses: ``ce`` and the 14 BAL settings of PAC + BAL Table 1 (``lin-d1-s15-b0.3`` ...
  ``gauss-d4-s35-sg3-b0.5``).

An id of another paper than the study's is allowed (it matches no row); an id of no paper
is a ValueError naming the run, the id and the valid ids. Runs that match no row of a table
are extra rows at its end, marked "(not in paper)" (or "(not in this table; see Table N)"
when a row of another of the paper's tables is theirs); paper rows no run of ours matches keep
their place with ours "—", so each table keeps the paper's rows in the paper's order.

Markdown: our table first (our runs, mIoU with its 95% interval, Δ with its interval and the
verdict, our costs), then, under "Against the paper's figures (other data, other scale)" (or
"(the paper's dataset; ...)" when every run is on the table's ``source``), the published
figures beside ours with the ours − paper differences: the papers measured on other data at
another scale, so these are context, not tests.

Δ (PAC + BAL): our Δ of a row is its mIoU minus the mIoU of our DeepLabV3 + CE run (model id
``deeplabv3``, loss ``ce``; one of the main matrix first) on the same dataset, both averaged
over the seeds they have in common; the paper's Δ is published (Tables 1-2) or the row's mIoU
minus DeepLabV3's (Table 3). Without our baseline the table says so and Δ stays empty.

CSV columns (metrics and differences in % points; costs as in the profile)
-------------------------------------------------------------------------
``table, paper_table`` (e.g. "Table 3"), ``dataset, row`` (paper row id; empty for a run not
in the paper), ``method`` (the paper's name; for a run in no row of the table "(not in paper)", or
"(not in this table; see Table N)" when a row of another table of the paper is its),
``in_paper`` (the run fills a row of this table), ``ours``
("model / loss", empty when no run of ours fills the row), ``model, loss, seeds`` (number of
seeds; 0 for a paper-only row), ``ours_mIoU_mean, ours_mIoU_std`` (sample std, n - 1),
``ours_mIoU_low, ours_mIoU_high`` (95% interval: one seed, metrics.json's ``mIoU_ci95``;
several, ``tables.seeds_interval`` over seeds and images; empty without per-image files),
``paper_<col>`` for each accuracy column the table publishes (``paper_AUC``, ``paper_mIoU``,
``paper_mIoU_val``, ``paper_mIoU_test``), ``diff_mIoU`` (ours mean − the compared paper
column; not for GraDNet, whose "AUC" is another measure); for the Δ tables ``ours_delta,
ours_delta_std`` (std of the paired differences), ``ours_delta_low, ours_delta_high`` (95%
interval, ``stats.bootstrap_delta_seeds`` on the per-image confusions over the common seeds;
empty when a run lacks them or the runs were not evaluated on the same images), ``verdict``
(``stats.verdict`` against the sign of the paper's Δ: holds, not significant, reversed; empty
without an interval or where the paper's Δ is 0), ``paper_delta, diff_delta``; then ``ours_fps, ours_MB, ours_GMACs`` (10^9 multiply-accumulates:
the papers' "GFLOPs"), ``ours_params_M`` each followed by ``paper_<cost>`` when the table
publishes it. ``unet_segnet_final`` has ``table, dataset, model, loss, ours, seeds,
train_epoch, val_epoch`` and ``{train,val}_{loss,mIoU,aAcc}_{mean,std}`` (mIoU, aAcc in %).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from segbench.io import write_text

if TYPE_CHECKING:  # pandas (0.5 s) only where tables are built: the Snakefile imports this module
    import pandas as pd

MISSING = "—"

# =========================================================================== the papers (data)


@dataclass(frozen=True)
class Paper:
    key: str
    short: str
    citation: str


PAPERS: dict[str, Paper] = {
    "gradnet": Paper("gradnet", "GraDNet",
                     "Jia, Li, Li. Pixel-level semantic segmentation based on gradient features. "
                     "Proc. SPIE 12506, 2022."),
    "pac_bal": Paper("pac_bal", "PAC + BAL",
                     "Yu. Semantic Image Segmentation with Pyramid Atrous Convolution and "
                     "Boundary-aware Loss. POSTECH."),
    "frm": Paper("frm", "FRM",
                 "Wang et al. A feature refinement module for light-weight semantic segmentation "
                 "network. arXiv:2412.08670, 2024."),
    "unet_segnet": Paper("unet_segnet", "U-Net vs SegNet", "Saraceno. Image semantic segmentation. 2022."),
}

#: BAL options the paper's Table 1 rows leave out take these values (BoundaryAwareLoss's defaults)
BAL_DEFAULTS: dict[str, Any] = {"kernel": "gaussian", "down": 4, "size": 35, "sigma": 3.0, "beta": 0.5}
#: PAC options (DeepLabV3PAC's defaults): the paper's best, 5 rates summed
PAC_DEFAULTS: dict[str, Any] = {"rates": (1, 3, 5, 7, 9), "merge": "sum"}

#: model ids of architectures, for runs without an explicit ``paper_row``
ARCH_MODEL_IDS = {"deeplabv3": "deeplabv3", "gradnet": "gradnet", "unet": "unet",
                  "van_fpn_frm": "frm", "van_fpn_ppm": "ppm", "van_fpn_dappm": "dappm"}


def _g(x: Any) -> str:
    """A number as it is written in an id: 3.0 -> "3", 0.5 -> "0.5"."""
    return f"{round(float(x), 6):g}"


def bal_id(kernel: str, down: int, size: int, sigma: float, beta: float) -> str:
    """The row id of a BAL setting (sigma is not part of a linear kernel's id);
    ``bal_id(**BAL_DEFAULTS)`` is ``gauss-d4-s35-sg3-b0.5``."""
    if kernel == "linear":
        return f"lin-d{int(down)}-s{int(size)}-b{_g(beta)}"
    short = "gauss" if kernel == "gaussian" else str(kernel)
    return f"{short}-d{int(down)}-s{int(size)}-sg{_g(sigma)}-b{_g(beta)}"


def pac_id(rates: Sequence[int], merge: str) -> str:
    """The row id of a PAC variant; ``pac_id(**PAC_DEFAULTS)`` is ``r1-3-5-7-9-sum``."""
    return "r" + "-".join(str(int(r)) for r in rates) + f"-{merge}"


@dataclass(frozen=True)
class Column:
    """A published column: ``key`` in the rows' values, its header, and its kind:
    "acc" (a % accuracy), "delta" (Δ mIoU, points) or a cost (fps, MB, GMACs, params_M)."""
    key: str
    label: str
    kind: str


@dataclass(frozen=True)
class Row:
    """A row of a paper table: what our run must be (model id, loss id or None = any loss)
    and the paper's figures (column key -> value; a column it leaves out is empty), with
    each figure as the paper prints it in ``text`` ("69.0", not "69")."""
    id: str
    method: str
    model: str
    loss: str | None
    values: Mapping[str, float]
    text: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PaperTable:
    """A published table: its id (file names), paper, number, title, the paper's data and
    scale in words, its published columns and rows (in the paper's order), and notes."""
    id: str
    paper: str
    number: int
    title: str
    #: the paper's data and scale, in words
    scale: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    #: the published accuracy column our mIoU is compared with (None: a Δ-only table)
    compare: str | None = None
    #: "published": the rows' Δ is a column; "derived": Δ = row − ``baseline_row``; None: no Δ
    delta: str | None = None
    baseline_row: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: the dataset source the paper measured on (``dataset_spec.source`` of a run on the same data)
    source: str = ""
    #: whether the compared column measures what our mIoU measures; False (GraDNet's "AUC"):
    #: no ours − paper difference is computed
    same_measure: bool = True


def _row(id: str, method: str, model: str | None = None, loss: str | None = None,
         **values: float | str) -> Row:
    """A row whose model id is its id unless ``model`` says otherwise. A figure is typed as
    the paper prints it: a string where a float would lose a digit ("69.0"), else a number."""
    nums = {k: float(v) for k, v in values.items()}
    text = {k: v if isinstance(v, str) else f"{v:g}" for k, v in values.items()}
    return Row(id, method, model or id, loss, nums, text)


ACC = "acc"
FPS = Column("fps", "fps", "fps")
MB = Column("MB", "MB", "MB")
GMACS = Column("GMACs", "GFLOPs", "GMACs")  # the papers' "GFLOPs" are multiply-accumulates
PARAMS = Column("params_M", "params (M)", "params_M")
#: our cost columns, from the profile: (kind, header)
OUR_COSTS = (("fps", "fps"), ("MB", "MB"), ("GMACs", "MACs (G)"), ("params_M", "params (M)"))

_GRADNET_NOTE = ("The paper heads its accuracy column “AUC (%)”; ours is mIoU (%), a different measure: the two "
                 "stand side by side and no difference between them is computed.")
_GRADNET_SCALE = ("crop 500x500, Adam, lr 1e-6, Dice loss, “epoch 24000”; speed and size on an RTX 2070")

# --- GraDNet -----------------------------------------------------------------------------
GRADNET_T2 = PaperTable(
    id="gradnet_t2", paper="gradnet", number=2, title="ADE20K",
    scale=f"ADE20K (150 classes), {_GRADNET_SCALE}",
    columns=(Column("AUC", "AUC (%)", ACC), FPS, MB), compare="AUC", same_measure=False,
    rows=(
        _row("gradnet", "GraDNet", AUC=73.8, fps=20.1, MB=22.1),
        _row("deep-snake", "Deep Snake", AUC=67.4, fps=12.3, MB=30.6),
        _row("unet", "UNet", AUC=68.6, fps=16.4, MB=28.7),
        _row("panet", "PANet", AUC=70.2, fps=13.6, MB=32.6),
        _row("fcis", "FCIS", AUC=66.7, fps=13.2, MB=26.1),
        _row("ese", "ESE", AUC=65.3, fps=15.1, MB=28.8),
        _row("sts", "STS", AUC="69.0", fps=14.7, MB=32.1),
    ),
    notes=(_GRADNET_NOTE,), source="ade20k",
)
GRADNET_T3 = PaperTable(
    id="gradnet_t3", paper="gradnet", number=3, title="Cityscapes, 8 categories",
    scale=(f"Cityscapes, 8 categories (our reading of the paper's “8 semantic classes”: void ignored, 7 scored), "
           f"{_GRADNET_SCALE} (the device stated with Table 2)"),
    columns=(Column("AUC", "AUC (%)", ACC), FPS, MB), compare="AUC", same_measure=False,
    rows=(
        _row("gradnet", "GraDNet", AUC=88.6, fps=28.6, MB=22.1),
        _row("deep-snake", "Deep Snake", AUC=82.4, fps=14.6, MB=30.6),
        _row("unet", "UNet", AUC=78.4, fps=18.6, MB=28.7),
        _row("panet", "PANet", AUC=86.5, fps=17.5, MB=32.6),
        _row("fcis", "FCIS", AUC=79.4, fps=16.2, MB=26.1),
        _row("ese", "ESE", AUC=68.6, fps=18.7, MB=28.8),
        _row("sts", "STS", AUC=63.2, fps=16.5, MB=32.1),
    ),
    notes=(_GRADNET_NOTE, "The paper's Table 3 names its second row “Deep”: Deep Snake, as in its Table 2; "
           "its sizes (MB) are Table 2's."), source="cityscapes",
)

# --- PAC + BAL ---------------------------------------------------------------------------
_PAC_SCALE = ("PASCAL VOC 2012 val (trained on VOC aug, 10,582 images), ResNet-101 (ImageNet), crop 513, "
              "scale 0.5-2.0, poly lr, 30k iterations, 2 GPUs x 8 images")
_DELTA_NOTE = ("Δ = mIoU − mIoU of DeepLabV3 + CE on the same data; ours over the seeds both runs have, with "
               "its 95% interval over images and seeds (± the sample std of the paired differences where the "
               "runs have no per-image confusions); verdict: our interval against the sign of the paper's Δ.")


def _bal_row(delta: float, kernel: str, down: int, size: int, beta: float, sigma: float | None = None) -> Row:
    opts = {"kernel": kernel, "down": down, "size": size, "beta": beta}
    if sigma is not None:
        opts["sigma"] = sigma
    rid = bal_id(**{**BAL_DEFAULTS, **opts})
    words = f"{kernel}, down {down}, size {size}" + (f", σ {sigma:.1f}" if sigma is not None else "") + f", β {beta}"
    return _row(rid, words, "deeplabv3", rid, delta=delta)


def _pac_row(delta: float, rates: Sequence[int], merge: str) -> Row:
    rid = pac_id(rates, merge)
    return _row(rid, f"{len(rates)} rates ({', '.join(map(str, rates))}), {merge}", rid, "ce", delta=delta)


_BEST_BAL = bal_id(**BAL_DEFAULTS)
_BEST_PAC = pac_id(**PAC_DEFAULTS)

PAC_BAL_T3 = PaperTable(
    id="pac_bal_t3", paper="pac_bal", number=3, title="PASCAL VOC 2012 val",
    scale=_PAC_SCALE,
    columns=(Column("mIoU", "mIoU (%)", ACC),), compare="mIoU", delta="derived", baseline_row="deeplabv3",
    rows=(
        _row("deeplabv3", "DeepLabV3", loss="ce", mIoU=76.68),
        _row("pac", "ResNet + PAC", _BEST_PAC, "ce", mIoU=76.97),
        _row("deeplabv3-bal", "DeepLabV3 + BAL", "deeplabv3", _BEST_BAL, mIoU=77.64),
        _row("pac-bal", "ResNet + PAC + BAL", _BEST_PAC, _BEST_BAL, mIoU=77.93),
    ),
    notes=(_DELTA_NOTE, f"PAC is the paper's best variant ({_BEST_PAC}), BAL its best setting ({_BEST_BAL}); "
           "a run with another variant or setting is not one of these rows."), source="voc",
)
PAC_BAL_T1 = PaperTable(
    id="pac_bal_t1", paper="pac_bal", number=1, title="BAL settings on DeepLabV3, Δ mIoU",
    scale=_PAC_SCALE, columns=(Column("delta", "Δ mIoU", "delta"),), delta="published",
    rows=(
        _bal_row(-0.35, "linear", 1, 15, 0.3),
        _bal_row(-0.12, "linear", 2, 15, 0.3),
        _bal_row(+0.15, "linear", 2, 15, 0.5),
        _bal_row(+0.32, "linear", 4, 15, 0.5),
        _bal_row(+0.58, "linear", 4, 25, 0.5),
        _bal_row(+0.68, "linear", 4, 35, 0.5),
        _bal_row(-0.82, "gaussian", 1, 15, 0.3, sigma=1.0),
        _bal_row(-0.43, "gaussian", 2, 15, 0.3, sigma=1.0),
        _bal_row(-0.14, "gaussian", 4, 15, 0.3, sigma=1.0),
        _bal_row(+0.13, "gaussian", 4, 25, 0.3, sigma=1.0),
        _bal_row(+0.24, "gaussian", 4, 35, 0.3, sigma=1.0),
        _bal_row(+0.62, "gaussian", 4, 35, 0.5, sigma=1.0),
        _bal_row(+0.81, "gaussian", 4, 35, 0.5, sigma=2.0),
        _bal_row(+0.96, "gaussian", 4, 35, 0.5, sigma=3.0),
    ),
    notes=(_DELTA_NOTE, "Rows are DeepLabV3 trained with each BAL setting (size in taps at 1/down resolution)."),
    source="voc",
)
PAC_BAL_T2 = PaperTable(
    id="pac_bal_t2", paper="pac_bal", number=2, title="PAC variants, Δ mIoU",
    scale=_PAC_SCALE, columns=(Column("delta", "Δ mIoU", "delta"),), delta="published",
    rows=(
        _pac_row(-0.12, (6, 12, 18), "concat"),
        _pac_row(-0.18, (6, 12, 18, 24), "concat"),
        _pac_row(+0.10, (6, 12, 18), "sum"),
        _pac_row(+0.14, (1, 3, 5), "concat"),
        _pac_row(+0.21, (1, 3, 5, 7, 9), "concat"),
        _pac_row(+0.11, (1, 3, 5, 7, 9, 11), "concat"),
        _pac_row(+0.29, (1, 3, 5, 7, 9), "sum"),
    ),
    notes=(_DELTA_NOTE, "Rows are ResNet + PAC (one shared 3x3 filter over the rates) trained with CE."),
    source="voc",
)

# --- FRM ---------------------------------------------------------------------------------
_FRM_TRAIN = "SGD, lr 0.01 poly, 300 epochs, CE + pixel contrastive loss"
_FRM_NOTE = ("The paper's “GFLOPs” are multiply-accumulates (fvcore's convention); ours, MACs (G), "
             "count the same way (profile, at our evaluation size).")
FRM_T1 = PaperTable(
    id="frm_t1", paper="frm", number=1, title="Cityscapes, with published peers",
    scale=f"Cityscapes val / test at 2048x1024, VAN-S + FRM + FPN, crop 1024x1024, batch 16, {_FRM_TRAIN}",
    columns=(Column("mIoU_val", "mIoU val (%)", ACC), Column("mIoU_test", "mIoU test (%)", ACC), GMACS, PARAMS),
    compare="mIoU_val",
    rows=(
        _row("sfnet-r18", "SFNet (ResNet-18)", mIoU_test=78.9, GMACs=243.87, params_M=12.87),
        _row("segformer-b1", "SegFormer (MiT-B1, 1024x1024)", mIoU_val=78.5, GMACs=243.7,
             params_M=13.7),
        _row("nrd-r50", "NRD (ResNet-50)", mIoU_test=78.9, GMACs=234.6, params_M=36.6),
        _row("bialignnet", "BiAlignNet (DFNet2)", mIoU_val=78.7, mIoU_test=77.1, GMACs=108.73,
             params_M=19.2),
        _row("sfanet-r18", "SFANet (ResNet-18)", mIoU_test=78.1, GMACs=99.6, params_M=14.6),
        _row("ifa-r50", "IFA (ResNet-50, 1024x1024)", mIoU_val="78.0", GMACs=186.9, params_M=27.8),
        _row("rtformer-b", "RTFormer-Base", mIoU_val=79.3, params_M=16.8),
        _row("ddrnet-23", "DDRNet-23", mIoU_val=79.5, mIoU_test=79.4, GMACs=143.1, params_M=20.1),
        _row("ddrnet-39", "DDRNet-39", mIoU_val=80.4, mIoU_test=80.4, GMACs=281.2, params_M=32.3),
        _row("pidnet-m", "PIDNet-M", mIoU_val=79.9, mIoU_test=79.8, GMACs=178.1, params_M=28.5),
        _row("frm", "Ours (VAN-S)", mIoU_val=80.8, mIoU_test=80.4, GMACs=214.82, params_M=16.48),
    ),
    notes=("diff = our mIoU (val) − the paper's val mIoU.",
           "The paper's GFLOPs are at its resolution column: 1024x1024 where the method says so, else "
           "2048x1024; it gives no GFLOPs for RTFormer-Base.", _FRM_NOTE), source="cityscapes",
)
FRM_T2 = PaperTable(
    id="frm_t2", paper="frm", number=2, title="Context module ablation, Cityscapes test",
    scale=(f"Cityscapes test at 2048x1024, VAN-S + FPN with FRM, PPM or DAPPM (each fed the concatenated "
           f"multi-stage features), crop 1024x1024, batch 16, {_FRM_TRAIN}"),
    columns=(Column("mIoU_test", "mIoU test (%)", ACC), GMACS, PARAMS), compare="mIoU_test",
    rows=(
        _row("frm", "FRM", mIoU_test=80.4, GMACs=214.82, params_M=16.48),
        _row("ppm", "PPM", mIoU_test=79.7, GMACs=213.21, params_M=15.23),
        _row("dappm", "DAPPM", mIoU_test=79.1, GMACs=214.81, params_M=15.98),
    ),
    notes=("The paper's mIoU here is on Cityscapes test; ours is on our val split: diff = our mIoU − "
           "the paper's test mIoU.", _FRM_NOTE), source="cityscapes",
)
FRM_T3 = PaperTable(
    id="frm_t3", paper="frm", number=3, title="BDD100K val",
    scale=(f"BDD100K val at 1280x720, VAN-S + FRM + FPN, crop 720x720, batch “16/32” (our reading: 32 on "
           f"BDD100K), {_FRM_TRAIN}"),
    columns=(Column("mIoU", "mIoU (%)", ACC), GMACS, PARAMS), compare="mIoU",
    rows=(
        _row("hanet-r101", "HANet (ResNet-101)", mIoU=64.56, params_M=65.4),
        _row("sfnet-r18", "SFNet (ResNet-18)", mIoU=60.6, GMACs=107.34, params_M=12.87),
        _row("pfnet-r50", "PFnet (ResNet-50)", mIoU=62.7, GMACs=302.1, params_M="33.0"),
        _row("frm", "Ours (VAN-S)", mIoU=64.9, GMACs=94.55, params_M=16.48),
    ),
    notes=("The paper gives no GFLOPs for HANet.", _FRM_NOTE), source="bdd100k",
)

# --- U-Net vs SegNet: no numeric table ---------------------------------------------------
UNET_SEGNET_FINAL = PaperTable(
    id="unet_segnet_final", paper="unet_segnet", number=0, title="final epoch, train vs validation",
    scale=("Cityscapes, U-Net (Xception-style encoder) and SegNet (MobileNet encoder), no pre-training, "
           "sparse categorical cross-entropy, Albumentations (flips, blur, rain, snow), TensorFlow MeanIoU"),
    columns=(), rows=(),
    notes=("The report publishes curves only (its Figure 8: loss, mean IoU and accuracy per epoch, train vs "
           "validation) and no numeric table, so there is no published figure to compare with; this table "
           "gives our values of the same quantities at the last epoch (accuracy = pixel accuracy, aAcc).",),
)

#: every table, in the order each paper's tables are shown (the main result first)
TABLES: dict[str, PaperTable] = {t.id: t for t in (
    GRADNET_T2, GRADNET_T3, PAC_BAL_T3, PAC_BAL_T1, PAC_BAL_T2, FRM_T1, FRM_T2, FRM_T3, UNET_SEGNET_FINAL)}


def model_row_ids() -> list[str]:
    """Every valid model ``paper_row`` id (in table order, no repeats)."""
    return list(dict.fromkeys(r.model for t in TABLES.values() for r in t.rows))


def loss_row_ids() -> list[str]:
    """Every valid loss ``paper_row`` id."""
    return list(dict.fromkeys(r.loss for t in TABLES.values() for r in t.rows if r.loss is not None))


# =========================================================================== matching


def _spec(run: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    spec = run.get(f"{kind}_spec")
    return spec if isinstance(spec, Mapping) else {}


def _check_paper_row(run: Mapping[str, Any], kind: str, valid: list[str]) -> str | None:
    rid = _spec(run, kind).get("paper_row")
    if rid is None:
        return None
    if rid not in valid:
        raise ValueError(f"run {run.get('run_key', '?')}: {kind}_spec paper_row {rid!r} is not a row id of the "
                         f"papers' tables; valid {kind} ids: {', '.join(valid)}")
    return rid


def validate_paper_rows(runs: Iterable[Mapping[str, Any]]) -> None:
    """Raise ValueError for a run whose model_spec or loss_spec names an unknown ``paper_row``."""
    models, losses = model_row_ids(), loss_row_ids()
    for run in runs:
        _check_paper_row(run, "model", models)
        _check_paper_row(run, "loss", losses)


def model_id(run: Mapping[str, Any]) -> str:
    """The model id of a run (its ``model_spec.paper_row``, else derived from arch and params)."""
    explicit = _check_paper_row(run, "model", model_row_ids())
    if explicit:
        return explicit
    spec = _spec(run, "model")
    arch = spec.get("arch") or run.get("model")
    params = spec.get("params") or {}
    if arch == "deeplabv3_pac":
        return pac_id(params.get("rates", PAC_DEFAULTS["rates"]), params.get("merge", PAC_DEFAULTS["merge"]))
    return ARCH_MODEL_IDS.get(arch, f"arch:{arch}")


def loss_id(run: Mapping[str, Any]) -> str:
    """The loss id of a run (its ``loss_spec.paper_row``, else derived from type and options)."""
    explicit = _check_paper_row(run, "loss", loss_row_ids())
    if explicit:
        return explicit
    spec = _spec(run, "loss")
    kind = spec.get("type") or run.get("loss")
    if kind == "bal":
        return bal_id(**{k: spec.get(k, v) for k, v in BAL_DEFAULTS.items()})
    return str(kind)


def match_row(table: PaperTable, run: Mapping[str, Any]) -> Row | None:
    """The row of ``table`` a run stands for, or None."""
    m, l = model_id(run), loss_id(run)
    for row in table.rows:
        if row.model == m and (row.loss is None or row.loss == l):
            return row
    return None


# =========================================================================== routing


def _source(run: Mapping[str, Any]) -> str:
    src = _spec(run, "dataset").get("source")
    if src:
        return str(src)
    return str(run.get("dataset", ""))  # a dataset named like its source


def _table_ids(study: Mapping[str, Any], run: Mapping[str, Any]) -> list[str]:
    """The tables a run fills, from the run dict and the study spec only."""
    paper = study.get("paper")
    source = _source(run)
    if paper == "gradnet":
        return ["gradnet_t2"] if source == "ade20k" else ["gradnet_t3"]
    if paper == "frm":
        return ["frm_t3"] if source == "bdd100k" else ["frm_t1", "frm_t2"]
    if paper == "unet_segnet":
        return ["unet_segnet_final"]
    if paper == "pac_bal":
        groups = run.get("groups") or ["main"]
        ablations = study.get("ablations") or {}
        by_kind = {"bal_grid": "pac_bal_t1", "pac_variants": "pac_bal_t2"}
        out = ["pac_bal_t3"] if "main" in groups else []
        for g in groups:
            t = by_kind.get((ablations.get(g) or {}).get("table"))
            if t and t not in out:
                out.append(t)
        return out
    raise ValueError(f"study {study.get('name')}: paper {paper!r} has no tables here; known papers: "
                     f"{', '.join(PAPERS)}")


def _route(study: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """(table id, dataset, file stem) of every table to write, in order."""
    if not study.get("paper"):
        return []
    if study["paper"] not in PAPERS:
        raise ValueError(f"study {study.get('name')}: paper {study['paper']!r} has no tables here; known papers: "
                         f"{', '.join(PAPERS)}")
    by_table: dict[str, list[str]] = {}
    for run in runs:
        for t in _table_ids(study, run):
            ds = by_table.setdefault(t, [])
            if run["dataset"] not in ds:
                ds.append(run["dataset"])
    out = []
    for t in TABLES:  # the paper's order
        datasets = by_table.get(t, [])
        for ds in datasets:
            out.append((t, ds, f"paper_{t}" + (f"_{ds}" if len(datasets) > 1 else "")))
    return out


def expected_paper_outputs(study: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Paths, relative to the study's folder, that ``write_paper_tables(study, runs, ...)``
    writes; from the study spec and the run dicts (dataset, groups, dataset_spec) only, no
    run file is read. ``[]`` for a study with no paper."""
    if not study.get("paper"):
        return []
    plan = _route(study, runs)
    validate_paper_rows(runs)
    out = []
    for _, _, stem in plan:
        out += [f"tables/{stem}.csv", f"tables/{stem}.md"]
    return out + ["tables/paper_tables.md"]


# =========================================================================== building


def _nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    import pandas as pd

    s = pd.Series(list(values), dtype=float)
    return (float(s.mean()) if len(s) else math.nan, float(s.std(ddof=1)) if len(s) > 1 else math.nan)


def _groups(df: pd.DataFrame) -> list[pd.DataFrame]:
    """Runs of one (model, loss), in the order first given."""
    return [g for _, g in df.groupby(["model", "loss"], sort=False)]


def _ours(g: pd.DataFrame) -> dict:
    first = g.iloc[0]
    mean, std = _mean_std(100 * g["mIoU"])
    return {
        "ours": f"{first['model']} / {first['loss']}", "model": first["model"], "loss": first["loss"],
        "seeds": len(g), "ours_mIoU_mean": mean, "ours_mIoU_std": std,
        "ours_fps": first["fps"], "ours_MB": first["MB"], "ours_GMACs": first["MACs"] / 1e9,
        "ours_params_M": first["params"] / 1e6,
    }


def _find_baseline(df_ds: pd.DataFrame) -> pd.DataFrame | None:
    """Our DeepLabV3 + CE runs on one dataset (a (model, loss) of the main matrix first)."""
    found = [g for g in _groups(df_ds)
             if model_id(g.iloc[0]) == "deeplabv3" and loss_id(g.iloc[0]) == "ce"]
    if not found:
        return None
    main = [g for g in found if "main" in g.iloc[0]["groups"]]
    return (main or found)[0]


def _delta(g: pd.DataFrame, base: pd.DataFrame) -> tuple[float, float, list]:
    """Mean and sample std over the common seeds of (row mIoU − baseline mIoU), in points."""
    a = g.set_index("seed")["mIoU"]
    b = base.set_index("seed")["mIoU"]
    common = [s for s in a.index if s in set(b.index)]
    if not common:
        return math.nan, math.nan, []
    mean, std = _mean_std([100 * (a[s] - b[s]) for s in common])
    return mean, std, common


def _delta_interval(g: pd.DataFrame, base: pd.DataFrame, common: list) -> tuple[dict | None, str | None]:
    """The bootstrap of our Δ of ``g`` against the baseline ``base`` over their ``common``
    seeds (:func:`segbench.stats.bootstrap_delta_seeds` on the runs' per-image confusions), or
    None and a note saying why there is none: a run evaluated without per-image confusions,
    or runs not on the same val images (another dataset or another number of images)."""
    from segbench import stats
    from segbench.report.tables import per_image

    a = [g[g["seed"] == s].iloc[0] for s in common]
    b = [base[base["seed"] == s].iloc[0] for s in common]
    label = f"{g.iloc[0]['model']} / {g.iloc[0]['loss']}"
    if len({r["dataset"] for r in a + b}) != 1 or len({int(r["num_images"]) for r in a + b}) != 1:
        counts = ", ".join(f"{r['run_key']}: {int(r['num_images'])}" for r in a + b)
        return None, (f"`{label}` and our DeepLabV3 + CE run were not evaluated on the same val images "
                      f"(images per run: {counts}): its Δ has no interval.")
    arrays_a, arrays_b = [per_image(r) for r in a], [per_image(r) for r in b]
    lacking = [r["run_key"] for r, x in zip(a + b, arrays_a + arrays_b) if x is None]
    if lacking:
        return None, (f"{', '.join(lacking)}: no confusion_per_image.npy (evaluated by an older segbench), so "
                      f"`{label}`'s Δ has no interval; run `snakemake` again to re-evaluate.")
    return stats.bootstrap_delta_seeds(arrays_a, arrays_b, statistic=stats.miou), None


def _verdict(low: float, high: float, paper_delta: float) -> str:
    """stats.verdict of our interval against the sign of the paper's Δ; "" when the paper has
    no Δ (or 0) or we have no interval."""
    from segbench import stats

    if _nan(low) or _nan(high) or _nan(paper_delta) or paper_delta == 0:
        return ""
    return stats.verdict(low, high, 1 if paper_delta > 0 else -1)


def _paper_values(table: PaperTable, row: Row | None) -> dict:
    out = {f"paper_{c.key}": (row.values.get(c.key, math.nan) if row else math.nan)
           for c in table.columns if c.kind != "delta"}
    return out


def build_table(table: PaperTable, df_table: pd.DataFrame,
                df_dataset: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One paper table on one dataset: the paper's rows in order (ours beside each), then
    our runs in no row. ``df_table``: the runs routed to the table (``collect_runs``
    columns); ``df_dataset``: every run of the study on that dataset (for the baseline).
    Returns the raw table (see the module docstring for its columns) and extra notes."""
    import pandas as pd

    dataset = df_table["dataset"].iloc[0]
    notes: list[str] = []
    matched: dict[str, list[pd.DataFrame]] = {r.id: [] for r in table.rows}
    extra: list[pd.DataFrame] = []
    for g in _groups(df_table):
        row = match_row(table, g.iloc[0])
        (matched[row.id] if row else extra).append(g)

    base = None
    if table.delta:
        base = _find_baseline(df_dataset)
        if base is None:
            notes.append(f"Our DeepLabV3 + CE run on `{dataset}` is missing (no run of this study with model "
                         "deeplabv3 and loss ce on this dataset), so our Δ is left empty.")
    paper_base = None
    if table.delta == "derived":
        paper_base = next(r for r in table.rows if r.id == table.baseline_row).values["mIoU"]

    def line(row: Row | None, g: pd.DataFrame | None) -> dict:
        rec = {"table": table.id, "paper_table": f"Table {table.number}", "dataset": dataset,
               "row": row.id if row else "", "method": row.method if row else _elsewhere(table, g.iloc[0]),
               "in_paper": row is not None}
        if g is not None:
            rec.update(_ours(g))
            from segbench.report.tables import group_interval

            low, high = group_interval(g)
            rec.update(ours_mIoU_low=100 * low, ours_mIoU_high=100 * high)
        else:
            rec.update({"ours": "", "model": "", "loss": "", "seeds": 0, "ours_mIoU_mean": math.nan,
                        "ours_mIoU_std": math.nan, "ours_mIoU_low": math.nan, "ours_mIoU_high": math.nan,
                        "ours_fps": math.nan, "ours_MB": math.nan, "ours_GMACs": math.nan,
                        "ours_params_M": math.nan})
        rec.update(_paper_values(table, row))
        if table.compare and table.same_measure:
            rec["diff_mIoU"] = rec["ours_mIoU_mean"] - rec[f"paper_{table.compare}"]
        if table.delta:
            d_mean, d_std, d_low, d_high = math.nan, math.nan, math.nan, math.nan
            if g is not None and base is not None:
                d_mean, d_std, common = _delta(g, base)
                if not common:
                    notes.append(f"`{rec['ours']}` shares no seed with our DeepLabV3 + CE run: its Δ is left empty.")
                elif list(g["run_key"]) != list(base["run_key"]):  # the baseline itself: Δ 0 by definition
                    boot, note = _delta_interval(g, base, common)
                    if boot is None:
                        notes.append(note)
                    else:
                        d_low, d_high = 100 * boot["low"], 100 * boot["high"]
            if row is None:
                paper_delta = math.nan
            elif table.delta == "published":
                paper_delta = row.values["delta"]
            else:
                paper_delta = round(row.values["mIoU"] - paper_base, 6)
            rec.update(ours_delta=d_mean, ours_delta_std=d_std, ours_delta_low=d_low, ours_delta_high=d_high,
                       verdict=_verdict(d_low, d_high, paper_delta), paper_delta=paper_delta,
                       diff_delta=d_mean - paper_delta)
        return rec

    recs = []
    for row in table.rows:
        recs += [line(row, g) for g in matched[row.id]] or [line(row, None)]
    recs += [line(None, g) for g in extra]
    cols = _csv_columns(table)
    return pd.DataFrame(recs).reindex(columns=cols), notes


def _elsewhere(table: PaperTable, run: Mapping[str, Any]) -> str:
    """The method cell of a run in no row of ``table``: "(not in paper)", or which other
    table of the paper has its row (FRM's PPM is in Table 2, not in Table 1)."""
    others = [t for t in TABLES.values() if t.paper == table.paper and t.id != table.id and match_row(t, run)]
    if others:
        return "(not in this table; see " + ", ".join(f"Table {t.number}" for t in others) + ")"
    return "(not in paper)"


def _csv_columns(table: PaperTable) -> list[str]:
    cols = ["table", "paper_table", "dataset", "row", "method", "in_paper", "ours", "model", "loss", "seeds",
            "ours_mIoU_mean", "ours_mIoU_std", "ours_mIoU_low", "ours_mIoU_high"]
    cols += [f"paper_{c.key}" for c in table.columns if c.kind == ACC]
    if table.compare and table.same_measure:
        cols.append("diff_mIoU")
    if table.delta:
        cols += ["ours_delta", "ours_delta_std", "ours_delta_low", "ours_delta_high", "verdict", "paper_delta",
                 "diff_delta"]
    published = {c.kind for c in table.columns}
    for kind, _ in OUR_COSTS:
        cols.append(f"ours_{kind}")
        if kind in published:
            cols.append(f"paper_{kind}")
    return cols


_HISTORY = ("loss", "mIoU", "aAcc")


def build_final_epoch_table(df: pd.DataFrame) -> pd.DataFrame:
    """U-Net vs SegNet: per (model, loss), the last epoch's train and val loss, mIoU and
    accuracy (mIoU, aAcc in %), mean and sample std over seeds. Val values are those of the
    last epoch that was validated (``val_epoch``)."""
    import pandas as pd

    from segbench.report.tables import read_history

    recs = []
    for g in _groups(df):
        first = g.iloc[0]
        finals: dict[str, list[float]] = {f"{s}_{m}": [] for s in ("train", "val") for m in _HISTORY}
        train_epochs, val_epochs = [], []
        for _, r in g.iterrows():
            h = read_history(r)
            last = h.iloc[-1]
            train_epochs.append(int(last["epoch"]))
            validated = h.dropna(subset=[c for c in ("val_loss", "val_mIoU") if c in h.columns])
            vlast = validated.iloc[-1] if len(validated) else None
            if vlast is not None:
                val_epochs.append(int(vlast["epoch"]))
            for m in _HISTORY:
                scale = 1.0 if m == "loss" else 100.0
                finals[f"train_{m}"].append(scale * float(last.get(f"train_{m}", math.nan)))
                v = math.nan if vlast is None else float(vlast.get(f"val_{m}", math.nan))
                finals[f"val_{m}"].append(scale * v)
        rec = {"table": UNET_SEGNET_FINAL.id, "dataset": first["dataset"], "model": first["model"],
               "loss": first["loss"], "ours": f"{first['model']} / {first['loss']}", "seeds": len(g),
               "train_epoch": max(train_epochs), "val_epoch": max(val_epochs) if val_epochs else math.nan}
        for s in ("train", "val"):
            for m in _HISTORY:
                rec[f"{s}_{m}_mean"], rec[f"{s}_{m}_std"] = _mean_std(finals[f"{s}_{m}"])
        recs.append(rec)
    return pd.DataFrame(recs)


# =========================================================================== describing


def _list(values: Iterable[str]) -> str:
    return ", ".join(dict.fromkeys(v for v in values if v)) or "n/a"


def ours_scale(df: pd.DataFrame) -> str:
    """Our data and scale, in words: dataset and source, eval size, train protocol, model
    width parameters, seeds, and the device and threads of the profiles."""
    first = df.iloc[0]
    ds = first["dataset_spec"] if isinstance(first["dataset_spec"], Mapping) else {}
    what = ", ".join(f"{k} {ds[k]}" for k in ("source", "labels") if ds.get(k))
    text = f"`{first['dataset']}`" + (f" ({what})" if what else "")
    text += f", evaluated at {_list(df['eval_size'])} (HxW, {_list(df['eval_protocol'])})"
    from segbench.report.tables import protocol_words

    per_model = {m: protocol_words(g.iloc[0]["train"]) or "protocol not recorded"
                 for m, g in df.groupby("model", sort=False)}
    if len(set(per_model.values())) == 1:
        text += f"; trained: {next(iter(per_model.values()))}"
    else:
        text += "; trained: " + "; ".join(f"{m}: {w}" for m, w in per_model.items())
    models = []
    for m, g in df.groupby("model", sort=False):
        spec = g.iloc[0]["model_spec"] if isinstance(g.iloc[0]["model_spec"], Mapping) else {}
        params = spec.get("params") or {}
        p = ", ".join(f"{k}={v}" for k, v in params.items()) or "default params"
        models.append(f"{m} ({spec.get('arch', '?')}, {p})")
    text += f"; models: {'; '.join(models)}"
    seeds = sorted({str(s) for s in df["seed"]})
    text += f"; seeds: {', '.join(seeds)}"
    devices = []
    for dev, thr in df[["device", "threads"]].drop_duplicates().itertuples(index=False):
        if _nan(dev):
            continue
        devices.append(f"{dev}" + ("" if _nan(thr) else f", {int(thr)} thread{'s' if int(thr) != 1 else ''}"))
    text += f"; costs profiled at {_list(df['profile_size'])} (HxW, batch 1) on {'; '.join(devices) or 'n/a'}"
    return text + "."


# =========================================================================== formatting


def _fmt(v: Any, digits: int = 2, sign: bool = False) -> str:
    if _nan(v):
        return MISSING
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _fmt_pm(mean: float, std: float, sign: bool = False, digits: int = 2) -> str:
    """``mean ± std`` (just the mean when std is NaN: a single seed)."""
    if _nan(mean):
        return MISSING
    return _fmt(mean, digits, sign) + ("" if _nan(std) else f" ± {std:.{digits}f}")


def _published(table: PaperTable, row_id: Any, key: str) -> str:
    """A published figure as the paper prints it; "—" when the paper gives none (or the
    line is a run of ours in no row of the table)."""
    row = next((r for r in table.rows if r.id == row_id), None)
    return row.text.get(key, MISSING) if row is not None else MISSING


def _fmt_interval(low: float, high: float, sign: bool = False) -> str:
    """``[49.10, 52.30]`` (``[-0.40, +2.80]`` with ``sign``); "—" when not known."""
    if _nan(low) or _nan(high):
        return MISSING
    return f"[{_fmt(low, sign=sign)}, {_fmt(high, sign=sign)}]"


def _fmt_delta(r: Mapping[str, Any]) -> str:
    """Our Δ with its 95% interval, ``+1.23 [-0.40, +2.80]``; without an interval (runs
    evaluated without per-image confusions) ``+1.25 ± 0.35`` (std of the paired differences)."""
    if _nan(r["ours_delta"]):
        return MISSING
    if _nan(r["ours_delta_low"]):
        return _fmt_pm(r["ours_delta"], r["ours_delta_std"], sign=True)
    return f"{_fmt(r['ours_delta'], sign=True)} {_fmt_interval(r['ours_delta_low'], r['ours_delta_high'], True)}"


def format_table(table: PaperTable, raw: pd.DataFrame) -> pd.DataFrame:
    """The main markdown view of ``build_table``'s result: our runs, their mIoU with its 95%
    interval, our Δ with its interval and verdict against the paper's Δ, our costs. The
    published figures and the ours − paper differences are :func:`format_against_paper`'s."""
    import pandas as pd

    out = []
    for _, r in raw.iterrows():
        rec = {"Method (paper)": r["method"], "Ours (model / loss)": r["ours"] or MISSING,
               "seeds": str(int(r["seeds"])) if r["seeds"] else MISSING,
               "mIoU ours (%)": _fmt_pm(r["ours_mIoU_mean"], r["ours_mIoU_std"]),
               "95% CI": _fmt_interval(r["ours_mIoU_low"], r["ours_mIoU_high"])}
        if table.delta:
            rec["Δ ours [95% CI]"] = _fmt_delta(r)
            rec["verdict"] = r["verdict"] if isinstance(r["verdict"], str) and r["verdict"] else MISSING
            rec["Δ paper"] = _fmt(r["paper_delta"], sign=True)
        for kind, header in OUR_COSTS:
            rec[f"{header} ours"] = _fmt(r[f"ours_{kind}"], 1 if kind in ("fps", "MB") else 2)
        out.append(rec)
    return pd.DataFrame(out)


def format_against_paper(table: PaperTable, raw: pd.DataFrame) -> pd.DataFrame:
    """The secondary markdown view: the published figures beside ours and, where both
    measure the same thing, ours − paper in points (never for GraDNet's "AUC")."""
    import pandas as pd

    acc = [c for c in table.columns if c.kind == ACC]
    published = [c for c in table.columns if c.kind not in (ACC, "delta")]
    out = []
    for _, r in raw.iterrows():
        rec = {"Method (paper)": r["method"], "Ours (model / loss)": r["ours"] or MISSING,
               "mIoU ours (%)": _fmt(r["ours_mIoU_mean"])}
        for c in acc:
            rec[f"{c.label.replace(' (%)', '')} paper (%)"] = _published(table, r["row"], c.key)
        if table.compare and table.same_measure:
            rec["diff (pts)"] = _fmt(r["diff_mIoU"], sign=True)
        if table.delta:
            rec["Δ ours"] = _fmt(r["ours_delta"], sign=True)
            rec["Δ paper"] = _fmt(r["paper_delta"], sign=True)
            rec["Δ diff (pts)"] = _fmt(r["diff_delta"], sign=True)
        for c in published:
            rec[f"{c.label} paper"] = _published(table, r["row"], c.key)
        out.append(rec)
    return pd.DataFrame(out)


def against_paper_title(table: PaperTable, df: pd.DataFrame) -> str:
    """The heading of the secondary table: whether our runs are on the paper's dataset."""
    if table.source and all(_source(r) == table.source for _, r in df.iterrows()):
        return "Against the paper's figures (the paper's dataset; our scale as stated above)"
    return "Against the paper's figures (other data, other scale)"


def format_final_epoch(raw: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    out = []
    for _, r in raw.iterrows():
        rec = {"Model": r["model"], "Loss": r["loss"], "seeds": str(int(r["seeds"])),
               "epoch": str(int(r["train_epoch"]))}
        for m, label, digits in (("loss", "loss", 4), ("mIoU", "mIoU (%)", 2), ("aAcc", "accuracy (%)", 2)):
            for s in ("train", "val"):
                rec[f"{s} {label}"] = _fmt_pm(r[f"{s}_{m}_mean"], r[f"{s}_{m}_std"], digits=digits)
        out.append(rec)
    return pd.DataFrame(out)


def _heading(table: PaperTable, dataset: str) -> str:
    paper = PAPERS[table.paper]
    number = f"Table {table.number}" if table.number else "Figure 8 (no table)"
    return f"{paper.short} — {number}: {table.title} · ours on `{dataset}`"


def table_markdown(table: PaperTable, raw: pd.DataFrame, df: pd.DataFrame, notes: Sequence[str] = (),
                   level: int = 1) -> str:
    """A table's markdown: heading, the paper's and our data and scale, our table (our runs,
    intervals, Δ and verdicts first), notes, then the published figures beside ours in a
    second, titled table."""
    from segbench.report.tables import _markdown, ci_note

    dataset = df["dataset"].iloc[0]
    paper = PAPERS[table.paper]
    lines = [
        f"{'#' * level} {_heading(table, dataset)}",
        "",
        f"- **Paper:** {paper.citation} {table.scale}.",
        f"- **Ours:** {ours_scale(df)}",
        "",
    ]
    if table.id == UNET_SEGNET_FINAL.id:
        lines += [_markdown(format_final_epoch(raw), 2), ""]
        lines += [f"- {n}" for n in list(table.notes) + list(notes)] + [""]
        return "\n".join(lines)
    lines += [_markdown(format_table(table, raw), 2), ""]
    all_notes = list(notes)
    all_notes.append("Ours: mean ± sample std (n − 1) over seeds, in %; 95% CI: the interval of our mIoU (one "
                     "seed: over its val images; several: over seeds and images); “—”: no run of ours or no "
                     "figure; “(not in paper)”: our runs that stand for no row of the paper's tables.")
    if table.delta:
        all_notes.append("Verdict against the sign of the paper's Δ: holds (our interval excludes 0 on the "
                         "paper's side), not significant (it contains 0), reversed (it excludes 0 on the other "
                         "side); none where the paper's Δ is 0 or absent.")
    all_notes.append(ci_note())
    lines += [f"- {n}" for n in all_notes] + [""]
    lines += [
        f"{'#' * (level + 1)} {against_paper_title(table, df)}",
        "",
        _markdown(format_against_paper(table, raw), 2),
        "",
    ]
    lines += [f"- {n}" for n in table.notes]
    if table.same_measure and table.compare:
        lines.append("- diff = ours − paper in % points, measured on other data at another scale unless the "
                     "line above says otherwise: context, not a test of the paper's claim.")
    return "\n".join(lines + [""])


# =========================================================================== writing


def write_paper_tables(study: dict, runs: list[dict], out_dir: str | os.PathLike) -> list[Path]:
    """Write the study's paper tables under ``out_dir/tables/`` and return their paths
    (exactly ``expected_paper_outputs(study, runs)``); ``[]`` when ``study["paper"]`` is None."""
    from segbench.report.tables import collect_runs

    if not study.get("paper"):
        return []
    runs = [dict(r) for r in runs]
    plan = _route(study, runs)
    validate_paper_rows(runs)
    out_dir = Path(out_dir)
    df = collect_runs(runs) if runs else None
    written: list[Path] = []
    sections = [f"# Paper tables — study {study.get('name', '')}", ""]
    paper = PAPERS[study["paper"]]
    sections += [f"{study.get('description') or ''}".strip(), "", f"Paper: {paper.citation}", ""]
    if not plan:
        sections += ["No run of this study fills a table of the paper.", ""]
    for tid, dataset, stem in plan:
        table = TABLES[tid]
        routed = [i for i, r in enumerate(runs) if r["dataset"] == dataset and tid in _table_ids(study, r)]
        df_table = df.iloc[routed].reset_index(drop=True)
        df_dataset = df[df["dataset"] == dataset].reset_index(drop=True)
        if tid == UNET_SEGNET_FINAL.id:
            raw, notes = build_final_epoch_table(df_table), []
        else:
            raw, notes = build_table(table, df_table, df_dataset)
        csv_path, md_path = out_dir / "tables" / f"{stem}.csv", out_dir / "tables" / f"{stem}.md"
        # 9 decimals drop float noise (-25.680000000000007) and keep every real digit
        write_text(csv_path, raw.round(9).to_csv(index=False, lineterminator="\n"))
        write_text(md_path, table_markdown(table, raw, df_table, notes, level=1))
        sections.append(table_markdown(table, raw, df_table, notes, level=2))
        written += [csv_path, md_path]
    index = out_dir / "tables" / "paper_tables.md"
    write_text(index, "\n".join(sections).rstrip() + "\n")
    return written + [index]


__all__ = [
    "BAL_DEFAULTS",
    "PAC_DEFAULTS",
    "PAPERS",
    "TABLES",
    "PaperTable",
    "Row",
    "bal_id",
    "build_final_epoch_table",
    "build_table",
    "expected_paper_outputs",
    "loss_id",
    "loss_row_ids",
    "match_row",
    "model_id",
    "model_row_ids",
    "ours_scale",
    "pac_id",
    "table_markdown",
    "validate_paper_rows",
    "write_paper_tables",
]
