"""Expand a validated config into the benchmark's jobs.

A *run* is one (dataset, model, loss, seed); its key ``{dataset}/{model}/{loss}/s{seed}``
names its directory under ``<results>/runs/`` (the config's ``results:`` folder, default
``results``). Studies are matrices over names; a run cited by several studies is trained once. A *profile* is one (model, classes, input size).

Each run's fully resolved specification (dataset, model, loss and the training protocol
after the dataset- and model-level overrides) is what the Snakefile hands to
``segbench train``; Snakemake's params trigger reruns exactly the runs whose spec changed.

Classes, split sizes and evaluation sizes of the dataset sources come from
:mod:`segbench.catalog`; a ``folder`` dataset's are read from its folder (its class list,
its file counts, its first val image; :mod:`segbench.data.folder`), once per plan. No torch here: the Snakefile imports this module at start-up.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from itertools import product

from segbench import catalog


def split_images(dataset: dict, split: str) -> int:
    """Images in the ``split`` ("train" or "val") of a dataset entry: a synthetic set's
    ``generate`` count; a real set's published count (:func:`segbench.catalog.split_images`;
    VOC's train is trainaug, 10,582 images, unless the entry says ``trainaug: false``). A real
    copy with ``allow_partial`` may hold fewer."""
    if catalog.DATASET_SOURCES[dataset["source"]].generated:
        return int(dataset["generate"][split])
    if catalog.DATASET_SOURCES[dataset["source"]].folder:  # counted in the folder (its manifest or images/)
        from segbench.data.folder import count_split

        return count_split(dataset["root"], split)
    return catalog.split_images(dataset["source"], split, trainaug=dataset.get("trainaug", True))


# dataset keys that say where the files are, not what they are
RUN_NEUTRAL_DATASET_KEYS = ("root", "download", "sbd_root")
#: the keys of `eval` a run's spec holds (training validates with eval.batch_size); the others
#: (eval.corruptions, the evaluation protocol) rerun evaluate or robustness jobs only
RUN_EVAL_KEYS = ("batch_size", "samples")


@dataclass(frozen=True, order=True)
class Run:
    dataset: str
    model: str
    loss: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.model}/{self.loss}/s{self.seed}"


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class Plan:
    """The runs of a validated config, by study.

    ``studies[study]`` lists a study's runs: its main matrix, then its enabled ablation grids
    (``groups[(study, run)]`` says which: "main" and/or ablation names). When the config's
    ``cross_study`` is enabled with datasets, the pseudo-study ``cross_study`` holds every
    method (model, loss) on those datasets.
    """

    def __init__(self, cfg: dict):
        from segbench.config import CROSS_STUDY, cross_methods, study_matrices

        self.cfg = cfg
        #: the folder every output goes under (the config's ``results:``, normalised by
        #: validate_config; a config that was not validated gets the default)
        self.results: str = cfg.get("results") or "results"
        self.studies: dict[str, list[Run]] = {}
        self.groups: dict[tuple[str, Run], list[str]] = {}
        seen: dict[Run, None] = {}

        def add(study: str, group: str, runs) -> None:
            members = self.studies.setdefault(study, [])
            for r in runs:
                if r not in members:
                    members.append(r)
                groups = self.groups.setdefault((study, r), [])
                if group not in groups:
                    groups.append(group)
                seen.setdefault(r, None)

        for study, group, m in study_matrices(cfg):
            add(study, group, (Run(d, mo, lo, int(seed)) for d, mo, lo, seed in
                               product(m["datasets"], m["models"], m["losses"], m["seeds"])))
        cross = cfg.get("cross_study") or {}
        if cross.get("enabled", True) and cross.get("datasets"):
            add(CROSS_STUDY, "main", (Run(d, mo, lo, int(seed)) for d, (mo, lo), seed in
                                      product(cross["datasets"], cross_methods(cfg), cross["seeds"])))
        self.runs: list[Run] = list(seen)
        #: a folder dataset's classes and eval size, read once (dataset name -> value)
        self._folder_classes: dict[str, int] = {}
        self._folder_eval_size: dict[str, tuple[int, int]] = {}
        # lookups Snakemake's input functions make once per job (thousands at paper scale)
        self._studies_of: dict[Run, list[str]] = {r: [] for r in self.runs}
        for study, runs in self.studies.items():
            for r in runs:
                self._studies_of[r].append(study)

    def study_spec(self, study: str) -> dict:
        """What the report needs to know of a study: its paper and its ablations' tables."""
        from segbench.config import CROSS_STUDY

        if study == CROSS_STUDY:
            return {"name": study, "paper": None, "cross": True, "ablations": {},
                    "description": "every method of the studies on the same data under the same protocol"}
        spec = self.cfg["studies"][study]
        ablations = {name: {"table": a["table"], "description": a.get("description", "")}
                     for name, a in spec.get("ablations", {}).items()
                     if self.cfg.get("ablations", True) and a.get("enabled", True)}
        return {"name": study, "paper": spec.get("paper"), "cross": False,
                "description": spec.get("description", ""), "ablations": ablations}

    def report_run(self, study: str, run: Run) -> dict:
        """One run as the report rule hands it to `segbench report`."""
        m = self.cfg["models"][run.model]
        ds = self.dataset(run.dataset)
        return {
            "run_key": run.key, "dataset": run.dataset, "model": run.model, "loss": run.loss,
            "seed": run.seed, "run_dir": self.run_dir(run), "profile": self.profile_path(run),
            "groups": list(self.groups[(study, run)]),
            "studies": self.studies_of(run),
            "model_spec": {k: copy.deepcopy(v) for k, v in m.items() if k in ("arch", "params", "paper_row")},
            "loss_spec": copy.deepcopy(self.cfg["losses"][run.loss]),
            "dataset_spec": {k: copy.deepcopy(v) for k, v in ds.items() if k in ("source", "labels", "generate")},
        }

    # -- datasets -------------------------------------------------------------------
    def dataset(self, name: str) -> dict:
        return self.cfg["datasets"][name]

    def num_classes(self, dataset: str) -> int:
        ds = self.dataset(dataset)
        if catalog.DATASET_SOURCES[ds["source"]].folder:
            if dataset not in self._folder_classes:
                from segbench.data.folder import read_class_list

                self._folder_classes[dataset] = len(read_class_list(ds["root"])[0])
            return self._folder_classes[dataset]
        return catalog.num_classes(ds["source"], ds["labels"])

    def split_images(self, dataset: str, split: str) -> int:
        """Images in a dataset's train or val split (``split_images``)."""
        return split_images(self.dataset(dataset), split)

    def eval_size(self, dataset: str) -> tuple[int, int]:
        ds = self.dataset(dataset)
        if ds.get("eval_size"):
            return tuple(ds["eval_size"])
        if catalog.DATASET_SOURCES[ds["source"]].folder:  # its first val image's, rounded up to multiples of 32
            if dataset not in self._folder_eval_size:
                from segbench.data.folder import eval_size

                self._folder_eval_size[dataset] = eval_size(ds["root"])
            return self._folder_eval_size[dataset]
        size = catalog.eval_size(ds["source"])
        if size is None:  # generated: evaluated at the generated size
            return (ds["generate"]["height"], ds["generate"]["width"])
        return size

    # -- runs -----------------------------------------------------------------------
    def train_spec(self, dataset: str, model: str) -> dict:
        spec = copy.deepcopy(self.cfg["train"])
        spec.update(self.dataset(dataset).get("train") or {})
        spec.update(self.cfg["models"][model].get("train") or {})
        return spec

    def run_spec(self, run: Run) -> dict:
        """Everything that determines a run's result (and nothing that does not)."""
        m = self.cfg["models"][run.model]
        # where the data came from (root, download URLs, credentials file) does not change a
        # run's result: leave it out, so it never retrains a run nor lands in run.json
        dataset = {k: copy.deepcopy(v) for k, v in self.dataset(run.dataset).items() if k not in RUN_NEUTRAL_DATASET_KEYS}
        return {
            "run_key": run.key,
            "dataset": {"name": run.dataset, **dataset, "num_classes": self.num_classes(run.dataset)},
            "model": {"name": run.model, "arch": m["arch"], "params": copy.deepcopy(m.get("params") or {})},
            # paper_row only says which row of a paper table the entry stands for
            "loss": {"name": run.loss, **{k: copy.deepcopy(v) for k, v in self.cfg["losses"][run.loss].items()
                                          if k != "paper_row"}},
            "seed": run.seed,
            "train": self.train_spec(run.dataset, run.model),
            # validation's batch size; the rest of `eval` (the protocol, corruptions) is the
            # evaluate and robustness jobs' business and never retrains a run
            "eval": {k: copy.deepcopy(self.cfg["eval"][k]) for k in RUN_EVAL_KEYS},
        }

    def find_run(self, dataset: str, model: str, loss: str, seed: int | str) -> Run:
        run = Run(dataset, model, loss, int(seed))
        if run not in self._studies_of:
            raise KeyError(f"run {run.key} is not in any study of the config")
        return run

    def run_dir(self, run: Run) -> str:
        return f"{self.results}/runs/{run.key}"

    def studies_of(self, run: Run) -> list[str]:
        return list(self._studies_of.get(run, ()))

    # -- profiles -------------------------------------------------------------------
    def profile_name(self, run: Run) -> str:
        h, w = self.eval_size(run.dataset)
        return f"{run.model}-c{self.num_classes(run.dataset)}-{h}x{w}"

    def profile_path(self, run: Run) -> str:
        return f"{self.results}/profiles/{self.profile_name(run)}.json"

    def model_spec(self, model: str) -> dict:
        m = self.cfg["models"][model]
        return {"name": model, "arch": m["arch"], "params": copy.deepcopy(m.get("params") or {})}

    def profile_channels_last(self, model: str):
        """The memory format a profile times the model in: the model's training format
        (``train.channels_last``, the model entry's over the global one; a profile is shared by
        every dataset, so a dataset's own setting does not apply)."""
        return {**self.cfg["train"], **(self.cfg["models"][model].get("train") or {})}.get("channels_last", "auto")

    def summary(self) -> str:
        lines = [f"{len(self.runs)} runs in {len(self.studies)} studies"]
        for study, runs in self.studies.items():
            lines.append(f"  {study}: {len(runs)} runs")
            lines.extend(f"    {r.key}" for r in runs)
        return "\n".join(lines)
