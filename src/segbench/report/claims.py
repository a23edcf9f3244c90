"""The claims table of a study of a paper: each claim the paper makes, the metric that tests
it, our Δ between two of our runs with its 95% interval, and the verdict.

Writes ``<study>/tables/claims.csv`` and ``claims.md`` for every study with a ``paper``
(``write_claims``). Runs are identified as the paper tables identify them
(:func:`segbench.report.paper.model_id` / ``loss_id``: the ``paper_row`` of a spec, else its
arch and parameters), so the same claims work on config.yaml and on
workflow/configs/paper.yaml. A (model, loss) with runs both in the main matrix and in an
ablation is taken from the main matrix first.

A claim compares run a with run b (a − b) over the seeds both have, on the same val images
(same dataset, same ``num_images``), with :func:`segbench.stats.bootstrap_delta_seeds` on
the runs' per-image arrays (docs/outputs.md); the verdict is :func:`segbench.stats.verdict`
of that interval against the claimed sign. Metrics (fractions in the CSV, points in the
markdown):

=================  ============================  ==============================================
metric             per-image file                statistic
=================  ============================  ==============================================
``mIoU``           confusion_per_image.npy       :func:`segbench.stats.miou`
``mBIoU``          boundary_per_image.npy        :func:`segbench.stats.biou`
``thin_mIoU``      confusion_per_image.npy       mIoU over metrics.json's ``thin_classes``
``recall_<bin>``   segments_per_image.npy        :func:`segbench.stats.recall` of bin small,
                                                 medium or large
``corrupted_mIoU`` corrupted_iou_per_image.npy   mean over corruptions and severities of the
                                                 mIoU (robustness job; "not measured" without)
``params``         the profile                   parameters in millions, exact (no interval)
=================  ============================  ==============================================

Every row also gives Δ MACs (G) from the profiles, for claims "at similar cost". A claim
whose runs are not in the study is one row saying which run is missing, with no number; a
metric the runs were not evaluated with (an older segbench, no thin class on the dataset,
no robustness job) is "not measured", never an error.

CSV columns: ``study, dataset, claim, metric, unit`` ("fraction", "M"), ``a, b`` (runs as
"model / loss", the paper tables' names), ``expected`` (+1 or -1: the claimed sign of a − b),
``seeds`` (common seeds), ``images``, ``delta, low, high`` (fractions, or M for params),
``verdict`` (holds, not significant, reversed, not measured, missing run), ``delta_GMACs``,
``note``.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from segbench.io import write_text

if TYPE_CHECKING:
    import pandas as pd

CLAIMS_CSV = "tables/claims.csv"
CLAIMS_MD = "tables/claims.md"
MISSING = "—"
#: the per-image file evaluation's robustness job writes: int64 [K corruptions, S severities, N, C, C]
CORRUPTED = "corrupted_iou_per_image.npy"


@dataclass(frozen=True)
class Side:
    """Which runs of a study are one side of a comparison: their model id and loss id
    (``paper.model_id`` / ``loss_id``; loss None = any loss), in words for a missing run."""
    words: str
    model: str
    loss: str | None = None


@dataclass(frozen=True)
class Claim:
    """A claim of a paper tested by ``metric``, Δ = a − b, expected sign ``sign`` (+1: a > b)."""
    text: str
    metric: str
    a: Side
    b: Side
    sign: int = 1


def _pac_bal_claims() -> list[Claim]:
    from segbench.report.paper import BAL_DEFAULTS, PAC_DEFAULTS, bal_id, pac_id

    bal, pac = bal_id(**BAL_DEFAULTS), pac_id(**PAC_DEFAULTS)
    dl_ce, dl_bal = Side("DeepLabV3 + CE", "deeplabv3", "ce"), Side("DeepLabV3 + BAL", "deeplabv3", bal)
    pac_ce, pac_bal = Side("ResNet + PAC + CE", pac, "ce"), Side("ResNet + PAC + BAL", pac, bal)
    out = []
    for text, metric in (("BAL improves boundaries", "mBIoU"), ("BAL improves thin parts", "thin_mIoU"),
                         ("BAL improves small objects", "recall_small")):
        out += [Claim(text, metric, dl_bal, dl_ce), Claim(text, metric, pac_bal, pac_ce)]
    for size in ("small", "medium", "large"):
        out.append(Claim("PAC captures objects at several scales", f"recall_{size}", pac_ce, dl_ce))
    out.append(Claim("PAC captures several scales with fewer parameters", "params", pac_ce, dl_ce, sign=-1))
    return out


def _claims(paper: str) -> list[Claim]:
    """The claims of a paper (U-Net vs SegNet's are built from the runs: :func:`_augment_claims`)."""
    if paper == "pac_bal":
        return _pac_bal_claims()
    if paper == "gradnet":
        gradnet, unet = Side("GraDNet", "gradnet"), Side("U-Net", "unet")
        return [Claim("gradient features sharpen edges", "mBIoU", gradnet, unet),
                Claim("gradient features sharpen edges", "mIoU", gradnet, unet)]
    if paper == "frm":
        frm = Side("FRM", "frm")
        return [Claim("FRM beats PPM at similar cost", "mIoU", frm, Side("PPM", "ppm")),
                Claim("FRM beats DAPPM at similar cost", "mIoU", frm, Side("DAPPM", "dappm"))]
    return []


# --------------------------------------------------------------------------- finding runs


def _groups(df: pd.DataFrame) -> list[pd.DataFrame]:
    """Runs of one (model, loss), those with a group "main" first, then in the order given."""
    groups = [g for _, g in df.groupby(["model", "loss"], sort=False)]
    return sorted(groups, key=lambda g: "main" not in g.iloc[0]["groups"])


def _find(df: pd.DataFrame, side: Side) -> pd.DataFrame | None:
    from segbench.report.paper import loss_id, model_id

    for g in _groups(df):
        first = g.iloc[0]
        if model_id(first) == side.model and (side.loss is None or loss_id(first) == side.loss):
            return g
    return None


def augmented(run: Mapping[str, Any]) -> bool:
    """Whether a run was trained with augmentations: ``train.augment`` non-empty in its model
    spec or in its training protocol (run.json)."""
    for train in ((run.get("model_spec") or {}).get("train"), run.get("train")):
        if isinstance(train, Mapping) and train.get("augment"):
            return True
    return False


def _augment_pairs(df: pd.DataFrame) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """(with, without augmentation) run groups of the same model id and loss id."""
    from segbench.report.paper import loss_id, model_id

    groups = _groups(df)
    pairs = []
    for g in groups:
        if not augmented(g.iloc[0]):
            continue
        key = (model_id(g.iloc[0]), loss_id(g.iloc[0]))
        plain = next((h for h in groups if not augmented(h.iloc[0])
                      and (model_id(h.iloc[0]), loss_id(h.iloc[0])) == key), None)
        if plain is not None:
            pairs.append((g, plain))
    return pairs


# --------------------------------------------------------------------------- statistics


def mean_corrupted_miou(counts):
    """Statistic of summed corrupted IoU counts [..., K, S, 2, C] (intersection, union per
    class): the mean over the K corruptions and S severities of the mIoU -> [...]."""
    import numpy as np

    from segbench import stats

    return np.mean(stats.mean_iou(counts), axis=(-2, -1))


def _per_image(run: Mapping[str, Any], metric: str):
    """The per-image array ``metric`` is computed from (image axis first), or None when the
    run was evaluated without it."""
    import numpy as np

    from segbench import runfiles
    from segbench.report.tables import per_image

    if metric in ("mIoU", "thin_mIoU"):
        return per_image(run, "confusion_per_image.npy")
    if metric == "mBIoU":
        return per_image(run, "boundary_per_image.npy")
    if metric.startswith("recall_"):
        return per_image(run, "segments_per_image.npy")
    if metric == "corrupted_mIoU":
        path = Path(run["run_dir"]) / CORRUPTED
        if not path.exists():
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise runfiles.damaged(path, f"is not a readable .npy array ({e})", "robustness") from None
        if arr.ndim != 5 or arr.dtype.kind not in "iu" or arr.shape[2] != int(run["num_images"]):
            raise runfiles.damaged(path, f"holds a {arr.dtype} array of shape {list(arr.shape)}, not the int64 "
                                         f"[K, S, {int(run['num_images'])}, 2, C] of metrics.json's num_images",
                                   "robustness")
        return np.moveaxis(arr, 2, 0)  # images first: [N, K, S, 2, C]
    raise ValueError(f"unknown claim metric {metric!r}")


#: the per-image file of each metric (by the metric's first word)
_FILES = {"mIoU": "confusion_per_image.npy", "thin": "confusion_per_image.npy", "mBIoU": "boundary_per_image.npy",
          "recall": "segments_per_image.npy"}


def _statistic(metric: str, run: Mapping[str, Any]) -> tuple[Callable | None, str | None]:
    """The statistic of ``metric`` (thin classes from ``run``'s metrics.json), or None and why."""
    from segbench import stats

    if metric == "mIoU":
        return stats.miou, None
    if metric == "mBIoU":
        return stats.biou, None
    if metric.startswith("recall_"):
        return functools.partial(stats.recall, bin=metric[len("recall_"):]), None
    if metric == "corrupted_mIoU":
        return mean_corrupted_miou, None
    if metric == "thin_mIoU":
        thin = list(run.get("thin_classes") or [])
        if not thin:
            return None, "metrics.json names no thin class (an older evaluation, or none on this dataset)"
        names = list(run["class_names"])
        unknown = [c for c in thin if c not in names]
        if unknown:
            return None, f"thin classes {', '.join(unknown)} are not classes of the dataset"
        return functools.partial(stats.class_miou, classes=[names.index(c) for c in thin]), None
    raise ValueError(f"unknown claim metric {metric!r}")


def _gmacs(ga: pd.DataFrame, gb: pd.DataFrame) -> float:
    return (float(ga.iloc[0]["MACs"]) - float(gb.iloc[0]["MACs"])) / 1e9


def compare(text: str, metric: str, ga: pd.DataFrame, gb: pd.DataFrame, sign: int) -> dict:
    """One row of the claims table: Δ ``metric`` of run group ``ga`` minus ``gb`` (rows of
    ``collect_runs``, one per seed) over their common seeds, its interval and verdict."""
    from segbench import stats

    label = lambda g: f"{g.iloc[0]['model']} / {g.iloc[0]['loss']}"  # noqa: E731
    rec = {"dataset": ga.iloc[0]["dataset"], "claim": text, "metric": metric,
           "unit": "M" if metric == "params" else "fraction", "a": label(ga), "b": label(gb),
           "expected": sign, "seeds": 0, "images": math.nan, "delta": math.nan, "low": math.nan,
           "high": math.nan, "verdict": "not measured", "delta_GMACs": _gmacs(ga, gb), "note": ""}
    if metric == "params":  # exact, from the profiles
        delta = (float(ga.iloc[0]["params"]) - float(gb.iloc[0]["params"])) / 1e6
        rec.update(delta=delta, low=delta, high=delta, verdict=stats.verdict(delta, delta, sign),
                   note="exact (profile), no interval")
        return rec
    common = [s for s in ga["seed"] if s in set(gb["seed"])]
    rec["seeds"] = len(common)
    if not common:
        rec["note"] = "the two runs share no seed"
        return rec
    a = [ga[ga["seed"] == s].iloc[0] for s in common]
    b = [gb[gb["seed"] == s].iloc[0] for s in common]
    counts = {int(r["num_images"]) for r in a + b}
    if len({r["dataset"] for r in a + b}) != 1 or len(counts) != 1:
        rec["note"] = "the runs were not evaluated on the same val images (" + ", ".join(
            f"{r['run_key']}: {int(r['num_images'])} images" for r in a + b) + ")"
        return rec
    rec["images"] = counts.pop()
    statistic, why = _statistic(metric, a[0])
    if statistic is None:
        rec["note"] = why
        return rec
    arrays_a, arrays_b = [_per_image(r, metric) for r in a], [_per_image(r, metric) for r in b]
    lacking = [r["run_key"] for r, x in zip(a + b, arrays_a + arrays_b) if x is None]
    if lacking:
        if metric == "corrupted_mIoU":
            rec["note"] = ("robustness not evaluated (no corrupted_iou_per_image.npy in "
                           f"{', '.join(lacking)}): set `eval.corruptions` in the config")
        else:
            rec["note"] = (f"no {_FILES[metric.split('_')[0]]} in {', '.join(lacking)} (evaluated by an older "
                           "segbench): run `snakemake` again to re-evaluate")
        return rec
    boot = stats.bootstrap_delta_seeds(arrays_a, arrays_b, statistic=statistic)
    if math.isnan(boot["delta"]):
        rec["note"] = f"{metric} is undefined on these images (nothing of it to measure)"
        return rec
    rec.update(delta=boot["delta"], low=boot["low"], high=boot["high"],
               verdict=stats.verdict(boot["low"], boot["high"], sign))
    return rec


def _missing(text: str, metric: str, dataset: str, claim_sides: Sequence[Side], absent: Sequence[Side],
             sign: int) -> dict:
    words = " vs ".join(s.words for s in claim_sides)
    which = "; ".join(f"{s.words} (model id {s.model}" + (f", loss id {s.loss})" if s.loss else ")")
                      for s in absent)
    return {"dataset": dataset, "claim": text, "metric": metric, "unit": "M" if metric == "params" else "fraction",
            "a": claim_sides[0].words, "b": claim_sides[1].words, "expected": sign, "seeds": 0,
            "images": math.nan, "delta": math.nan, "low": math.nan, "high": math.nan, "verdict": "missing run",
            "delta_GMACs": math.nan, "note": f"{words}: no run of {which} in this study"}


# --------------------------------------------------------------------------- the table


COLUMNS = ["study", "dataset", "claim", "metric", "unit", "a", "b", "expected", "seeds", "images", "delta", "low",
           "high", "verdict", "delta_GMACs", "note"]


def build_claims(study: Mapping[str, Any], df: pd.DataFrame) -> pd.DataFrame:
    """The claims table of ``study`` over its runs ``df`` (``collect_runs``), one block per dataset."""
    import pandas as pd

    recs = []
    for dataset, d in df.groupby("dataset", sort=False):
        d = d.reset_index(drop=True)
        if study["paper"] == "unet_segnet":
            pairs = _augment_pairs(d)
            for with_aug, without in pairs:
                recs.append(compare("augmentation improves generalisation", "mIoU", with_aug, without, 1))
                recs.append(compare("augmentation improves robustness", "corrupted_mIoU", with_aug, without, 1))
            if not pairs:
                sides = (Side("a model trained with train.augment", "any"), Side("the same model without", "any"))
                for text, metric in (("augmentation improves generalisation", "mIoU"),
                                     ("augmentation improves robustness", "corrupted_mIoU")):
                    rec = _missing(text, metric, dataset, sides, (), 1)
                    rec["note"] = "no pair of runs of one model (same model and loss id) with and without " \
                                  "`train.augment` in this study"
                    recs.append(rec)
        for claim in _claims(study["paper"]):
            ga, gb = _find(d, claim.a), _find(d, claim.b)
            if ga is None or gb is None:
                absent = [s for s, g in ((claim.a, ga), (claim.b, gb)) if g is None]
                recs.append(_missing(claim.text, claim.metric, dataset, (claim.a, claim.b), absent, claim.sign))
            else:
                recs.append(compare(claim.text, claim.metric, ga, gb, claim.sign))
    out = pd.DataFrame(recs).reindex(columns=COLUMNS)
    out["study"] = study.get("name", "")
    return out


_METRIC_WORDS = {"mIoU": "Δ mIoU", "mBIoU": "Δ mBIoU", "thin_mIoU": "Δ thin-class mIoU",
                 "recall_small": "Δ recall, small segments", "recall_medium": "Δ recall, medium segments",
                 "recall_large": "Δ recall, large segments", "corrupted_mIoU": "Δ mean corrupted mIoU",
                 "params": "Δ params"}


def _fmt_delta(r: Mapping[str, Any]) -> str:
    """``+1.23 [-0.40, +2.80]`` in points (params: ``-1.52 M``, exact)."""
    if r["delta"] is None or math.isnan(r["delta"]):
        return MISSING
    if r["metric"] == "params":
        return f"{r['delta']:+.2f} M"
    if math.isnan(r["low"]):
        return f"{100 * r['delta']:+.2f}"
    return f"{100 * r['delta']:+.2f} [{100 * r['low']:+.2f}, {100 * r['high']:+.2f}]"


def format_claims(raw: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for _, r in raw.iterrows():
        rows.append({
            "claim (paper)": r["claim"], "metric": _METRIC_WORDS.get(r["metric"], r["metric"]),
            "a vs b": f"{r['a']} vs {r['b']}", "claimed": "a > b" if r["expected"] > 0 else "a < b",
            "Δ (a − b) [95% CI]": _fmt_delta(r), "verdict": r["verdict"],
            "seeds": str(int(r["seeds"])) if r["seeds"] else MISSING,
            "images": MISSING if pd.isna(r["images"]) else str(int(r["images"])),
            "Δ MACs (G)": MISSING if pd.isna(r["delta_GMACs"]) else f"{r['delta_GMACs']:+.2f}",
        })
    return pd.DataFrame(rows)


def claims_markdown(study: Mapping[str, Any], raw: pd.DataFrame) -> str:
    from segbench.report.paper import PAPERS
    from segbench.report.tables import _markdown, ci_note

    paper = PAPERS[study["paper"]]
    lines = [f"# Claims of {paper.short} — study {study.get('name', '')}", "",
             f"Paper: {paper.citation}", "",
             "Each claim of the paper, the metric that tests it, and our Δ = a − b between two of our runs "
             "(points; params in millions) with its 95% interval; the verdict compares the interval with the "
             "claimed direction: holds (it excludes 0 on the claimed side), not significant (it contains 0), "
             "reversed (it excludes 0 on the other side).", ""]
    for dataset, block in raw.groupby("dataset", sort=False):
        if raw["dataset"].nunique() > 1:
            lines += [f"## `{dataset}`", ""]
        lines += [_markdown(format_claims(block), 4), ""]
    notes = [f"{r['claim']} ({_METRIC_WORDS.get(r['metric'], r['metric'])}, {r['a']} vs {r['b']}): {r['note']}"
             for _, r in raw.iterrows() if isinstance(r["note"], str) and r["note"]]
    lines += [f"- {n}" for n in notes]
    lines += [f"- {ci_note()}", "- Δ MACs (G): a − b from the profiles (10^9 multiply-accumulates per image), "
              "for the claims made at similar cost.", ""]
    return "\n".join(lines)


def write_claims(study: Mapping[str, Any], runs: list[dict], out_dir: str | os.PathLike) -> list[Path]:
    """Write ``tables/claims.csv`` and ``tables/claims.md`` of a study of a paper under
    ``out_dir``; ``[]`` for a study without a paper."""
    from segbench.report.tables import collect_runs

    if not study.get("paper"):
        return []
    out_dir = Path(out_dir)
    raw = build_claims(study, collect_runs(runs))
    csv_path, md_path = out_dir / CLAIMS_CSV, out_dir / CLAIMS_MD
    write_text(csv_path, raw.round(9).to_csv(index=False, lineterminator="\n"))
    write_text(md_path, claims_markdown(study, raw))
    return [csv_path, md_path]


__all__ = ["CLAIMS_CSV", "CLAIMS_MD", "Claim", "Side", "build_claims", "compare", "mean_corrupted_miou",
           "write_claims"]
