"""MLflow as a *view* of the run directories: rebuildable, idempotent, never the source of truth.

Layout in the tracking store
----------------------------
* one experiment per study, named ``segbench-{study}`` (see :func:`experiment_name`), whose
  artifact location is ``<artifact_root>/<study>`` (an absolute ``file://`` URI) for a local
  store, and the server's choice for a tracking server (``http(s)://``: ``mlflow server``
  proxies the artifacts into its ``--artifacts-destination``, so compute nodes need no
  access to the server's disk);
* each experiment carries ``mlflow.experimentKind=custom_model_development`` (MLflow's UI
  opens it on its runs, not on the GenAI overview) and, when the caller gives it (the
  pipeline's track-init, ``segbench sync``), the study's description (:func:`study_note`) as
  ``mlflow.note.content``;
* one MLflow run per (study, run key), named ``model · loss · s<seed>`` (led by the dataset
  when the study has several: :func:`run_name`), tagged ``segbench.run_key``, nested
  (``mlflow.parentRunId``) under
* one study-level run per study, named ``study:{study}``, tagged ``segbench.kind=study`` and
  ``segbench.study_run={study}``, holding the study's tables and figures;
* on each run: the config as params, with the ``train.*`` values training actually used
  (run.json's amp, channels_last, device, workers, threads); the history per epoch,
  ``final_*``, ``best_val_mIoU``/``best_epoch`` and ``profile_*`` metrics; the dataset as
  an input (split sizes, the prepared manifest's digest); the tags ``device``,
  ``segbench.version`` and ``segbench.git_commit``; the images ``images/confusion_matrix.png``
  (normalised per row) and ``images/samples.png`` (image | ground truth | prediction);
* the trained model, logged once as an MLflow PyTorch model with a signature, in the run's
  *home* study (the first study of the config citing it); its runs in other studies carry
  ``segbench.model_run`` (the MLflow run holding the model) and a link in their description.

Idempotency
-----------
:func:`log_run` looks the run up by its ``segbench.run_key`` tag. With the same
``segbench.config_hash`` the MLflow run is *updated*: per-epoch metrics are logged only for
(key, step) pairs not yet in its history, summary metrics (``final_*``, ``best_*``,
``profile_*``) only when absent or when their latest value changed, params already present
are skipped, tags, name and artifacts are overwritten, the dataset input is added once, the
model is logged only if the run has none yet (tag ``segbench.model_uri``). A run whose logged
params differ from the files' (a store written by an older segbench) is logged afresh, as
MLflow's params cannot change. With a different hash (the run was retrained with another
config) the stale MLflow run is deleted (soft delete; ``mlflow gc`` reclaims its artifacts)
and a fresh one is created. Logging the same directory any number of times gives the same
store.

Concurrency
-----------
Every process takes an exclusive ``flock`` on ``<db>.lock`` beside a local sqlite store around
its first connection (where the store is created, checked and repaired: see below), around
experiment creation and around finding-or-creating a run and writing its metrics, params and
tags. So the migrations run exactly once, and any number of writers (parallel track jobs, two
``segbench sync`` at once) give one MLflow run per run key with each metric point once.
:func:`init_store` before fanning out is still the cheap way.

The local sqlite store
----------------------
On each connection, under the lock (:func:`_prepare_local_store`):

* a missing store is *created aside* (``.mlflow.db.creating-<pid>``, where MLflow runs its
  migrations) and moved into place (``os.replace``): a kill leaves no store or a whole one,
  never a half-migrated one (the next process removes the leftover);
* a *damaged or half-made* store (not a sqlite file, failing ``PRAGMA integrity_check``, a
  leftover ``_alembic_tmp_*`` table of an interrupted migration, tables missing, a schema
  revision other than the installed MLflow's head) is moved aside to
  ``mlflow.db.damaged-<time>`` with a message naming both paths, and a fresh store is created.
  The step logs its own run into it; ``segbench sync`` logs every run directory again (the
  run directories are the truth, MLflow is a view);
* a store *moved or copied* to another folder (``mv``, ``cp -a``) is repointed: the store
  remembers the folder it was made in (tag ``segbench.store_dir`` of experiment 0), and the
  artifact locations inside that folder, or beside it when the sibling folder came along
  (``results/mlartifacts`` of a store in ``store/``), are rewritten to the new folder, with a
  message. So a moved or copied working folder never writes outside itself.

Failures
--------
Any failure to reach or write the store raises :class:`TrackingError`, whose message names
the tracking URI and how to re-sync later. A missing or damaged run file raises
:class:`RunFileTrackingError` naming the file and how to recreate it. The run directory is
only ever read.

Records and sync
----------------
The pipeline's track jobs write a small JSON *record* per step (``results/mlflow/init.json``,
``results/mlflow/runs/{run key}.json``, ``results/mlflow/studies/{study}.json``; see
:func:`write_record`). A record's ``status`` is ``logged``, or ``skipped`` when the store
failed: then it says why and how to complete MLflow later, and the pipeline goes on (tables
and figures come from the files, not from MLflow). :func:`record_round` turns a skipped
record into a changed Snakemake param, so the next ``snakemake`` retries exactly the skipped
track jobs; :func:`sync` (``segbench sync``) logs every run directory and study at once.

``mlflow`` is imported lazily inside the functions: ``import segbench.tracking`` is cheap.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import itertools
import json
import math
import os
import queue
import re
import shutil
import sqlite3
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping
from urllib.parse import unquote, urlparse

from segbench.errors import UserError
from segbench.io import default_file_mode

__all__ = [
    "TrackingError",
    "RECORD_LOGGED",
    "RECORD_SKIPPED",
    "read_record",
    "record_round",
    "write_record",
    "sync",
    "default_tracking_uri",
    "default_artifact_root",
    "experiment_name",
    "init_store",
    "damaged_stores",
    "log_run",
    "log_study",
    "run_params",
    "LIVE_ENV",
    "live_env",
    "live_run_for",
    "LiveRun",
    "register_best_model",
    "registered_model_name",
]

EXPERIMENT_PREFIX = "segbench-"
TAG_RUN_KEY = "segbench.run_key"
TAG_CONFIG_HASH = "segbench.config_hash"
TAG_KIND = "segbench.kind"
TAG_STUDY_RUN = "segbench.study_run"
TAG_MODEL_RUN = "segbench.model_run"  # on a run logged in several studies: the run holding its model
TAG_MODEL_URI = "segbench.model_uri"  # on the run holding the model: models:/<id> of the logged model
# MLflow's own tags: the UI opens an experiment of this kind on its runs (not the GenAI
# overview), shows the note as the experiment's / run's description, and nests a run under
# its parent run.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
TAG_NOTE = "mlflow.note.content"
TAG_PARENT = "mlflow.parentRunId"
# run.json fields that say what training actually used (the config may ask for AMP on a
# CPU, which trains without it): logged as the train.* params instead of the config's values
EFFECTIVE_TRAIN_FIELDS = ("amp", "channels_last", "device", "workers", "threads")

# MLflow 3.x limits (mlflow.utils.validation); repeated here to avoid importing mlflow early.
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_KEY_LENGTH = 250
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000

FINAL_METRICS = ("mIoU", "aAcc", "mAcc", "mDice")
PROFILE_METRICS = ("params", "macs", "fps", "size_mb")
# history.csv columns that are the step / timestamp, not metrics.
HISTORY_INDEX_COLUMNS = ("epoch", "time")
RUN_FILES = ("metrics.json", "history.csv", "run.json", "confusion.npy")


class TrackingError(UserError, RuntimeError):
    """The tracking store could not be reached or written. The run's files are untouched."""


class RunFileTrackingError(TrackingError):
    """A run could not be logged because one of its files is missing or damaged (the cause is
    the :class:`segbench.runfiles.RunFileError`, whose message names the file and the remedy).
    A :class:`TrackingError`, so the pipeline's track step records "skipped" and goes on."""


# --------------------------------------------------------------------------- naming / URIs


def default_tracking_uri(results_dir: str | os.PathLike) -> str:
    """``sqlite:///<absolute results_dir>/mlflow.db``."""
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def is_server(tracking_uri: str) -> bool:
    """True for a tracking server (``http://``, ``https://``), which stores artifacts itself."""
    return tracking_uri.split(":", 1)[0].lower() in ("http", "https")


def default_artifact_root(tracking_uri: str) -> Path:
    """``<db folder>/mlartifacts`` for a local sqlite store, else ``./mlartifacts``."""
    db = _sqlite_path(tracking_uri)
    base = db.parent if db is not None else Path.cwd()
    return (base / "mlartifacts").resolve()


def experiment_name(study: str) -> str:
    """The MLflow experiment of a study: ``segbench-{study}``."""
    return f"{EXPERIMENT_PREFIX}{study}"


def _sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a local ``sqlite:///`` URI, else None."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    rest = tracking_uri[len(prefix):].split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest)  # "sqlite:////abs/x.db" -> "/abs/x.db"; "sqlite:///x.db" -> cwd-relative


def _resync_hint(run_dir: str | os.PathLike | None, studies: Iterable[str] | None) -> str:
    target = str(run_dir) if run_dir is not None else "RUN_DIR"
    study_args = " ".join(f"--study {s}" for s in (studies or [])) or "--study STUDY"
    return (
        f"The files on disk are intact; once the store is reachable, rerun snakemake (it retries "
        f"skipped track jobs) or run `segbench sync` (everything) or `segbench track {target} "
        f"{study_args}` (this run)."
    )


def _error(action: str, tracking_uri: str, exc: BaseException, run_dir=None, studies=None):
    hint = _resync_hint(run_dir, studies)
    db = _sqlite_path(tracking_uri)
    text = str(exc).lower()
    if db is not None and ("malformed" in text or "not a database" in text):
        hint = (f"The store file {db} is damaged: run `segbench sync`, which moves it aside "
                f"({db.name}.damaged-TIME) and logs every run directory into a fresh store.")
    return TrackingError(
        f"MLflow {action} failed for tracking URI {tracking_uri!r}: "
        f"{type(exc).__name__}: {exc}. {hint}"
    )


# --------------------------------------------------------------------------- store access


@contextlib.contextmanager
def _store_lock(tracking_uri: str) -> Iterator[None]:
    """Exclusive flock beside a local sqlite db (no-op for other stores)."""
    db = _sqlite_path(tracking_uri)
    if db is None:
        yield
        return
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _connect(tracking_uri: str):
    """An MlflowClient whose store is open. A local sqlite store is first made sound under the
    store lock (:func:`_prepare_local_store`: created atomically, moved aside if damaged,
    repointed if moved), so the migrations run exactly once and never on a live store."""
    from mlflow import MlflowClient

    db = _sqlite_path(tracking_uri)
    with _store_lock(tracking_uri):
        if db is not None:
            _prepare_local_store(db, tracking_uri)
        client = MlflowClient(tracking_uri=tracking_uri)
        client.search_experiments(max_results=1)
    return client


# --------------------------------------------------------------------------- local sqlite store
#
# All of this runs under the store lock (:func:`_store_lock`), so at most one process at a
# time creates, checks, moves aside or repairs a given store.

STORE_DIR_TAG = "segbench.store_dir"  # tag of experiment 0: the folder the store was made in


def _note(message: str) -> None:
    print(f"segbench: {message}", file=sys.stderr)


def _prepare_local_store(db: Path, tracking_uri: str) -> None:
    """Create a missing store; move a damaged one aside and create a fresh one; repoint the
    artifact locations of a store that was moved or copied to another folder."""
    for leftover in db.parent.glob(f".{glob.escape(db.name)}.creating-*"):  # a creator killed mid-way
        leftover.unlink(missing_ok=True)
    if not db.exists() or _is_empty_sqlite(db):
        _create_store(db)
        return
    problem = _store_problem(db)
    if problem is None:
        _repair_moved_store(db)
        return
    aside = db.with_name(f"{db.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
    n = 1
    while aside.exists():
        n += 1
        aside = db.with_name(f"{db.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}-{n}")
    try:
        os.replace(db, aside)
        for suffix in ("-journal", "-wal", "-shm"):  # never leave a hot journal for the new file
            side = db.with_name(db.name + suffix)
            if side.exists():
                os.replace(side, aside.with_name(aside.name + suffix))
    except OSError as exc:
        raise TrackingError(
            f"The MLflow store {db} is damaged ({problem}) and could not be moved aside: {exc}. "
            f"Move it aside yourself (mv {db} {aside}), then run `segbench sync`: MLflow is only a "
            "view of the run directories, which are intact."
        ) from exc
    _forget_engine(tracking_uri)
    _create_store(db)
    _note(
        f"the MLflow store {db} was damaged ({problem}); moved it aside to {aside} and created a "
        f"fresh store. The run directories are the truth: `segbench sync` logs them all into it "
        "again (a track step logs only its own run)."
    )


def damaged_stores(tracking_uri: str, since: float = 0.0) -> list[Path]:
    """The damaged stores moved aside beside a local sqlite store (``<db>.damaged-<time>``)
    at or after the unix time ``since``, oldest first (none for other stores)."""
    db = _sqlite_path(tracking_uri)
    if db is None:
        return []
    start = time.strftime("%Y%m%dT%H%M%S", time.localtime(since))
    marker = f"{db.name}.damaged-"
    return sorted(p for p in db.parent.glob(f"{glob.escape(marker)}*")
                  if p.name[len(marker):len(marker) + 15] >= start
                  and not p.name.endswith(("-journal", "-wal", "-shm")))


def _is_empty_sqlite(db: Path) -> bool:
    """A zero-byte file, or a sqlite file without a single table (a creation killed at once)."""
    if db.stat().st_size == 0:
        return True
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=60)) as con:
            return con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    except sqlite3.DatabaseError:
        return False  # not a database at all: _store_problem says so


def _store_problem(db: Path) -> str | None:
    """Why the sqlite store ``db`` is damaged or half-made, or None if it is sound."""
    from mlflow.store.db.base_sql_model import Base
    from mlflow.store.db.utils import _get_latest_schema_revision
    from mlflow.store.tracking import sqlalchemy_store  # noqa: F401  (registers every table)

    try:
        with contextlib.closing(sqlite3.connect(db, timeout=60)) as con:
            check = con.execute("PRAGMA integrity_check").fetchall()
            if check != [("ok",)]:
                return f"sqlite integrity check: {check[0][0]}"
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            leftovers = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
            if leftovers:
                return f"an interrupted migration left table {leftovers[0]}"
            if "alembic_version" not in tables:
                return "it has no MLflow schema version (table alembic_version is missing)"
            versions = [r[0] for r in con.execute("SELECT version_num FROM alembic_version")]
    except sqlite3.OperationalError:
        raise  # locked, busy, no permission: the store is unreachable, not damaged
    except sqlite3.DatabaseError as exc:  # "file is not a database", "disk image is malformed"
        return f"not a sqlite database: {exc}"
    missing = sorted(set(Base.metadata.tables) - tables)
    if missing:
        return f"tables missing: {', '.join(missing[:5])}"
    head = _get_latest_schema_revision()
    if versions != [head]:
        import mlflow

        found = ", ".join(versions) or "none"
        return (f"its schema is at revision {found}, not {head} of the installed MLflow "
                f"{mlflow.__version__}: a creation or migration was interrupted, or another "
                "MLflow version made it")
    return None


def _create_store(db: Path) -> None:
    """Make a fresh store beside ``db`` (``.<name>.creating-<pid>``), let MLflow create its
    tables there and move it into place: a kill leaves either no store or a whole one."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db.parent.mkdir(parents=True, exist_ok=True)
    here = db.parent.resolve()
    tmp = here / f".{db.name}.creating-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp_uri = f"sqlite:///{tmp}"
    try:
        SqlAlchemyStore(tmp_uri, (here / "mlartifacts").as_uri())
    finally:
        _forget_engine(tmp_uri)
    with contextlib.closing(sqlite3.connect(tmp)) as con:
        con.execute("INSERT INTO experiment_tags (key, value, experiment_id) VALUES (?, ?, 0)",
                    (STORE_DIR_TAG, str(here)))
        con.commit()
    with open(tmp, "rb+") as fh:
        os.fchmod(fh.fileno(), default_file_mode())  # the umask's, like every result (sqlite makes 0644)
        os.fsync(fh.fileno())
    os.replace(tmp, db)
    dir_fd = os.open(here, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _forget_engine(db_uri: str) -> None:
    """Close MLflow's cached connections to ``db_uri`` (its file was replaced)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engine = SqlAlchemyStore._engine_map.get(db_uri)
    if engine is not None:
        engine.dispose()


def _moved(location: str | None, old: str, new: str) -> str | None:
    """Where ``location`` (a ``file://`` URI or an absolute path) is after the store's folder
    moved from ``old`` to ``new``, or None if it stays where it is.

    Inside ``old``: the same place inside ``new``. Beside it (``../results/mlartifacts/s`` of a
    store in ``store/``): the same place beside ``new`` if that folder (``results``) is there,
    i.e. the working folder moved as a whole. Elsewhere (another disk): where it is.
    """
    if location and location.startswith("file://"):
        path = unquote(urlparse(location).path)
    elif location and location.startswith("/"):
        path = location
    else:
        return None  # a server's or a cloud location: not ours to move
    rel = os.path.relpath(path, old)
    parts = Path(rel).parts
    ups = len(list(itertools.takewhile(lambda part: part == "..", parts)))
    if ups == len(parts) and rel != ".":
        return None  # the location holds the store's folder
    if ups and not Path(os.path.normpath(os.path.join(new, *parts[:ups + 1]))).is_dir():
        return None  # beside the store, and not taken along
    target = os.path.normpath(os.path.join(new, rel))
    if target == os.path.normpath(path):
        return None
    return Path(target).as_uri() if location.startswith("file://") else target


def _old_store_dir(con, here: Path) -> str:
    """The folder a store made before it carried :data:`STORE_DIR_TAG` was made in: the one
    holding the ``mlartifacts/<study>`` folders of its experiments when that folder has the
    store folder's name (``/old/results`` for ``/new/results``), else the store's folder."""
    found = set()
    for name, location in con.execute("SELECT name, artifact_location FROM experiments"):
        study = name[len(EXPERIMENT_PREFIX):] if name.startswith(EXPERIMENT_PREFIX) else None
        suffix = f"/mlartifacts/{study}"
        if study and location and location.startswith("file://") and location.endswith(suffix):
            found.add(location[len("file://"):-len(suffix)])
    if len(found) == 1:
        (old,) = found
        if Path(old).name == here.name:
            return old
    return str(here)


def _repair_moved_store(db: Path) -> None:
    """If the store was made in another folder (it was moved, or this is a copy), repoint the
    artifact locations inside that folder to this one, so nothing is written outside it."""
    here = db.parent.resolve()
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con:
        row = con.execute("SELECT value FROM experiment_tags WHERE experiment_id = 0 AND key = ?",
                          (STORE_DIR_TAG,)).fetchone()
        old = row[0] if row else _old_store_dir(con, here)
        new = str(here)
        if row is not None and old == new:
            return
        experiments, runs = 0, []
        if old != new:
            for exp_id, location in con.execute(
                    "SELECT experiment_id, artifact_location FROM experiments").fetchall():
                if (fixed := _moved(location, old, new)) is not None:
                    con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                                (fixed, exp_id))
                    experiments += 1
            for run_id, uri in con.execute("SELECT run_uuid, artifact_uri FROM runs").fetchall():
                if (fixed := _moved(uri, old, new)) is not None:
                    con.execute("UPDATE runs SET artifact_uri = ? WHERE run_uuid = ?", (fixed, run_id))
                    runs.append(run_id)
        con.execute("DELETE FROM experiment_tags WHERE experiment_id = 0 AND key = ?", (STORE_DIR_TAG,))
        con.execute("INSERT INTO experiment_tags (key, value, experiment_id) VALUES (?, ?, 0)",
                    (STORE_DIR_TAG, new))
        con.commit()
    if old != new:
        from mlflow.tracking._tracking_service import utils as service_utils

        for run_id in runs:  # this process may have cached the old location of a run's artifacts
            service_utils._artifact_repos_cache.pop(run_id, None)
        _note(f"the MLflow store {db} was made in {old}: repointed the artifact locations of "
              f"{experiments} experiment(s) and {len(runs)} run(s) inside it to {new}")


def _experiment_id(client, tracking_uri: str, study: str, artifact_root: Path | None,
                   note: str | None = None) -> str:
    """Get (restoring if deleted) or create the study's experiment.

    It carries the tag ``mlflow.experimentKind`` (so MLflow's UI opens it on its runs) and,
    when ``note`` is given, the study's description as ``mlflow.note.content`` (set at
    creation, rewritten when it changed)."""
    from mlflow.entities import LifecycleStage

    name = experiment_name(study)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        if artifact_root is None and is_server(tracking_uri):
            location = None  # the server's default: proxied into its --artifacts-destination
        else:
            root = Path(artifact_root) if artifact_root is not None else default_artifact_root(tracking_uri)
            location = (root.resolve() / study).as_uri()
        tags = {"segbench.study": study, TAG_EXPERIMENT_KIND: EXPERIMENT_KIND}
        if note:
            tags[TAG_NOTE] = _tag(note)
        with _store_lock(tracking_uri):
            exp = client.get_experiment_by_name(name)  # another process may have won
            if exp is None:
                try:
                    return client.create_experiment(name, artifact_location=location, tags=tags)
                except Exception:
                    exp = client.get_experiment_by_name(name)
                    if exp is None:
                        raise
    if exp.lifecycle_stage == LifecycleStage.DELETED:
        client.restore_experiment(exp.experiment_id)
    if exp.tags.get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND:  # a store made by an older segbench
        client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
    if note and exp.tags.get(TAG_NOTE) != _tag(note):
        client.set_experiment_tag(exp.experiment_id, TAG_NOTE, _tag(note))
    return exp.experiment_id


def study_note(plan, study: str) -> str:
    """The description of a study's experiment (Markdown, shown above its runs in MLflow's
    UI): the config's description and paper, what is compared, and the training scale
    (epochs, crop, model widths) of its runs. ``plan``: a :class:`segbench.plan.Plan`."""
    runs = plan.studies[study]
    spec = plan.study_spec(study)
    lines = [spec.get("description") or f"Study {study}."]

    def names(values) -> str:
        return ", ".join(dict.fromkeys(str(v) for v in values))

    lines += [
        "",
        f"- datasets: {names(r.dataset for r in runs)}",
        f"- models: {names(r.model for r in runs)}",
        f"- losses: {names(r.loss for r in runs)}",
        f"- seeds: {names(r.seed for r in runs)}",
    ]
    scale = {}
    for r in runs:
        t = plan.train_spec(r.dataset, r.model)
        crop = "x".join(str(v) for v in t.get("crop") or []) or "full images"
        scale.setdefault(f"{t.get('epochs')} epochs, crop {crop} (HxW), batch {t.get('batch_size')}", None)
    lines.append(f"- training: {'; '.join(scale)}")
    widths = []
    for model in dict.fromkeys(r.model for r in runs):
        params = plan.cfg["models"][model].get("params") or {}
        shown = ", ".join(f"{k} {v}" for k, v in params.items() if k in ("width", "width_mult", "depth"))
        widths.append(f"{model} ({shown})" if shown else model)
    lines.append(f"- model sizes: {'; '.join(widths)}")
    lines += ["", f"{len(runs)} runs, each nested under the study run `study:{study}`, which holds "
              "the study's tables and figures."]
    return "\n".join(lines)


def init_store(
    tracking_uri: str, studies: list[str], artifact_root: str | os.PathLike | None = None,
    notes: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Create the store (running its migrations once) and one experiment per study.

    Experiments are named ``segbench-{study}`` with artifact location
    ``file://<artifact_root>/<study>`` (``artifact_root`` None: :func:`default_artifact_root`
    for a local store, the server's default for a tracking server); existing ones are reused
    (restored if deleted, their artifact location left as it was). ``notes`` (study ->
    Markdown, see :func:`study_note`) become the experiments' descriptions. Safe to call again.
    Returns study -> experiment id.
    """
    root = Path(artifact_root) if artifact_root is not None else None
    notes = notes or {}
    try:
        client = _connect(tracking_uri)
        return {s: _experiment_id(client, tracking_uri, s, root, notes.get(s)) for s in studies}
    except TrackingError:
        raise
    except Exception as exc:
        raise _error("store initialisation", tracking_uri, exc, studies=studies) from exc


# --------------------------------------------------------------------------- reading a run dir


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)  # accepts NaN


def _to_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


_BAD_KEY_CHARS = re.compile(r"[^\w.\- ]")


def _key(name: str) -> str:
    """A valid MLflow metric/param key: alphanumerics, ``_ - . space``; at most 250 chars."""
    key = _BAD_KEY_CHARS.sub("_", str(name)).strip()
    key = re.sub(r"\.{2,}", ".", key).strip(".") or "_"
    return key[:MAX_KEY_LENGTH]


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, sort_keys=True, default=str)
    else:
        text = str(value)
    return text[:MAX_PARAM_VAL_LENGTH]


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b.c": "value"}; lists JSON-encoded; empty dicts kept as "{}"."""
    out: dict[str, str] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, prefix=f"{key}."))
        else:
            out.setdefault(_key(key), _param_value(v))
    return out


def _run_identity(info: Mapping[str, Any]) -> tuple[str, str]:
    key = info.get("run_key")
    if not key:
        key = f"{info['dataset']}/{info['model']}/{info['loss']}/s{info['seed']}"
    return str(key), str(info.get("config_hash", ""))


def _tag(value: Any) -> str:
    return str(value)[:MAX_TAG_VAL_LENGTH]


def _filter_eq(tag: str, value: str) -> str:
    """``tags.`tag` = 'value'`` with the value quoted safely for MLflow's filter grammar."""
    if "'" not in value:
        quoted = f"'{value}'"
    elif '"' not in value:
        quoted = f'"{value}"'
    else:
        raise ValueError(f"cannot quote tag value containing both quote characters: {value!r}")
    return f"tags.`{tag}` = {quoted}"


# --------------------------------------------------------------------------- logging helpers


def _log_batch(client, run_id: str, metrics=(), params=(), tags=()) -> None:
    """log_batch in chunks that respect MLflow's per-request limits."""
    metrics, params, tags = list(metrics), list(params), list(tags)
    while metrics or params or tags:
        p, params = params[:MAX_PARAMS_TAGS_PER_BATCH], params[MAX_PARAMS_TAGS_PER_BATCH:]
        t, tags = tags[:MAX_PARAMS_TAGS_PER_BATCH], tags[MAX_PARAMS_TAGS_PER_BATCH:]
        room = MAX_ENTITIES_PER_BATCH - len(p) - len(t)
        m, metrics = metrics[:room], metrics[room:]
        client.log_batch(run_id, metrics=m, params=p, tags=t, synchronous=True)


def _find_runs(client, experiment_id: str, tag: str, value: str) -> list:
    from mlflow.entities import ViewType

    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=_filter_eq(tag, value),
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            order_by=["attributes.start_time DESC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _get_or_create_run(client, experiment_id, *, tag, value, config_hash, run_name, start_time, tags):
    """Return (run, created). Keeps the newest matching run; deletes stale/duplicate ones."""
    existing = _find_runs(client, experiment_id, tag, value)
    keep = None
    for run in existing:  # newest first
        if keep is None and (config_hash is None or run.data.tags.get(TAG_CONFIG_HASH) == config_hash):
            keep = run
        else:
            client.delete_run(run.info.run_id)
    if keep is not None:
        return keep, False
    run = client.create_run(experiment_id, start_time=start_time, tags=tags, run_name=run_name)
    return run, True


def _metric_history(client, run, keys: Iterable[str]) -> dict[str, set[int]]:
    """key -> set of logged steps, fetched only for keys the run already has."""
    present = run.data.metrics
    return {
        k: {m.step for m in client.get_metric_history(run.info.run_id, k)} if k in present else set()
        for k in keys
    }


def _write_iou_table(
    folder: Path, class_names: list[str], ious: list[Any]
) -> tuple[Path, dict[str, list]]:
    path = folder / "iou_per_class.csv"
    table: dict[str, list] = {"class": [], "IoU": []}
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["class", "IoU"])
        for i, iou in enumerate(ious):
            name = class_names[i] if i < len(class_names) else str(i)
            val = _to_float(iou)
            w.writerow([name, "" if val is None else repr(val)])
            table["class"].append(name)
            table["IoU"].append(val)
    return path, table


def _log_iou_table(client, run_id: str, table: dict[str, list], tmp: Path) -> None:
    """The IoU table as an MLflow table (``iou_per_class.json``), overwritten, never appended.

    ``MlflowClient.log_table`` appends to an existing artifact of the same name, so it is used
    only the first time; later the file is rewritten in the same (pandas "split") format.
    """
    import pandas as pd

    name = "iou_per_class.json"
    if name not in {f.path for f in client.list_artifacts(run_id)}:
        client.log_table(run_id, data=pd.DataFrame(table), artifact_file=name)
        return
    path = tmp / name
    pd.DataFrame(table).to_json(path, orient="split", index=False, date_format="iso")
    client.log_artifact(run_id, str(path))


def run_name(info: Mapping[str, Any], with_dataset: bool = False) -> str:
    """A run's name in MLflow's lists: ``model · loss · s<seed>``, led by the dataset when
    the study has several (``synthetic · unet · ce · s0``)."""
    parts = [info.get("model", "?"), info.get("loss", "?"), f"s{info.get('seed', '?')}"]
    if with_dataset:
        parts.insert(0, info.get("dataset", "?"))
    return " · ".join(str(p) for p in parts)


def _git_commit() -> str | None:
    """The commit of the segbench checkout this code runs from, or None outside a git repo."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        proc = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = proc.stdout.strip()
    return commit if proc.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


def _results_of(run_dir: Path, run_key: str) -> Path | None:
    """The results folder holding ``runs/{run key}`` (None if the run is not in that layout)."""
    parents = run_dir.resolve().parents
    depth = len(run_key.split("/")) - 1
    if depth >= len(parents):  # a run directory near the root (by hand): not that layout
        return None
    runs = parents[depth]
    return runs.parent if runs.name == "runs" else None


def _dataset_of(run_dir: Path, run_key: str, info: Mapping[str, Any]):
    """The run's dataset as an MLflow dataset: its split sizes, with the digest of the
    prepared manifest (``results/data/{dataset}/manifest.csv``); without a manifest, the
    split sizes of run.json's dataset entry (a synthetic set's ``generate``). None if neither."""
    import hashlib

    import mlflow.data
    import pandas as pd

    name = str(info.get("dataset", ""))
    results = _results_of(run_dir, run_key)
    manifest = results / "data" / name / "manifest.csv" if results is not None else None
    if manifest is not None and manifest.is_file():
        data = manifest.read_bytes()
        counts: dict[str, int] = {}
        for row in csv.DictReader(data.decode("utf-8").splitlines()):
            counts[row.get("split") or "?"] = counts.get(row.get("split") or "?", 0) + 1
        digest = hashlib.sha256(data).hexdigest()[:16]
        source = str(manifest)
    else:
        spec = (info.get("config") or {}).get("dataset") or {}
        generate = spec.get("generate") or {}
        counts = {split: int(generate[split]) for split in ("train", "val") if split in generate}
        if not counts:
            return None
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        source = str(run_dir.resolve() / "run.json")
    frame = pd.DataFrame({"split": list(counts), "images": list(counts.values())})
    with _quiet_dataset_notes():
        return mlflow.data.from_pandas(frame, source=source, name=name, digest=digest)


@contextlib.contextmanager
def _quiet_dataset_notes() -> Iterator[None]:
    """Leave out two warnings of MLflow 3.17 that say nothing about a split-size table (its
    local-file source class is registered twice; integer columns cannot hold missing values)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in multiple ways")
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer column")
        yield


def _log_dataset(client, run, dataset) -> None:
    """The dataset as the run's input (context ``train``), once per (name, digest)."""
    from mlflow.entities import DatasetInput, InputTag

    for existing in run.inputs.dataset_inputs if run.inputs else []:
        if (existing.dataset.name, existing.dataset.digest) == (dataset.name, dataset.digest):
            return
    with _quiet_dataset_notes():
        entity = dataset._to_mlflow_entity()
    client.log_inputs(run.info.run_id, datasets=[
        DatasetInput(entity, tags=[InputTag("mlflow.data.context", "train")])])


def _best_epoch(history: list[dict]) -> tuple[float, int] | None:
    """(best val mIoU, its epoch) of the history, or None without val mIoU."""
    best = None
    for i, row in enumerate(history):
        value = _to_float(row.get("val_mIoU"))
        if value is not None and (best is None or value > best[0]):
            best = (value, int(float(row.get("epoch", i + 1))))
    return best


def _write_confusion_png(conf, names: list[str], path: Path) -> None:
    """The confusion matrix normalised per row (each true class sums to 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    totals = conf.sum(axis=1, keepdims=True)
    norm = np.divide(conf, totals, out=np.zeros(conf.shape, dtype=float), where=totals > 0)
    c = len(norm)
    size = max(4.0, 0.35 * c + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    labels = [names[i] if i < len(names) else str(i) for i in range(c)]
    ax.set_xticks(range(c), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(c), labels, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix (each row sums to 1)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _write_samples_png(samples: Mapping[str, Any], palette: list, path: Path) -> None:
    """One row per sample: image | ground truth | prediction (labels in the run's palette;
    the ignore label black)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colours = np.zeros((256, 3), dtype=np.uint8)
    for i, rgb in enumerate(palette[:255]):
        colours[i] = rgb
    k = len(samples["names"])
    h, w = samples["labels"].shape[1:3]
    fig, axes = plt.subplots(k, 3, figsize=(9, max(1.0, 3 * h / w) * k + 0.4), squeeze=False)
    for i in range(k):
        panels = (samples["images"][i], colours[samples["labels"][i]], colours[samples["preds"][i]])
        for j, (panel, title) in enumerate(zip(panels, ("image", "ground truth", "prediction"))):
            ax = axes[i][j]
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title)
        axes[i][0].set_ylabel(str(samples["names"][i])[-24:], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _log_model(client, tracking_uri: str, run_id: str, run_dir: Path, info, final) -> str:
    """Log the run's trained model (model.pt rebuilt from run.json) as an MLflow PyTorch
    model with a signature: float32 images [-1, 3, H, W] in, class logits [-1, C, H, W] out
    (H, W: the evaluation size). Returns its ``models:/`` URI. It loads where segbench is
    importable (the model's classes are segbench's): ``mlflow.pytorch.load_model(uri)``."""
    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from segbench.engine.evaluate import load_trained

    model, _ = load_trained(run_dir, "cpu")
    size = (final or {}).get("input_size") or ((info.get("config") or {}).get("dataset") or {}).get("eval_size")
    h, w = (int(size[0]), int(size[1])) if size else (-1, -1)
    c = int(info["num_classes"])
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, h, w), "image")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, c, h, w), "logits")]),
    )
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        logged = mlflow.pytorch.log_model(
            model, name="model", signature=signature, serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
        )
    return logged.model_uri


def _study_run_note(study: str, study_dir: Path) -> str:
    return (f"The study `{study}`: its tables and figures (from `{study_dir}`) are this run's "
            "artifacts; the study's training runs are nested under it.")


def _study_run_id(client, exp_id: str, study: str) -> str | None:
    """The id of the study run ``study:{study}`` if the study's tables are logged, else None."""
    found = _find_runs(client, exp_id, TAG_STUDY_RUN, study)
    return found[0].info.run_id if found else None


def _nest_runs(client, exp_id: str, parent_id: str) -> None:
    """Make the study run the parent of every run of its experiment (tag mlflow.parentRunId)."""
    for run in _find_runs(client, exp_id, TAG_KIND, "run"):
        if run.data.tags.get(TAG_PARENT) != parent_id:
            client.set_tag(run.info.run_id, TAG_PARENT, parent_id)


def _name_runs(client, exp_id: str, run_id: str, info: Mapping[str, Any]) -> str:
    """Name the run (:func:`run_name`); when the study's runs span several datasets, every
    run's name leads with its dataset (runs named before the second dataset came are renamed).
    Returns the run's name."""
    from mlflow.entities import ViewType

    others = client.search_runs([exp_id], filter_string=_filter_eq(TAG_KIND, "run"),
                                run_view_type=ViewType.ACTIVE_ONLY, max_results=5000)
    datasets = {r.data.tags.get("dataset") for r in others} | {str(info.get("dataset", ""))}
    several = len(datasets) > 1
    for r in others:
        t = r.data.tags
        if r.info.run_id == run_id:
            continue
        wanted = run_name({"dataset": t.get("dataset"), "model": t.get("model"), "loss": t.get("loss"),
                           "seed": t.get("seed")}, several)
        if r.info.run_name != wanted:
            client.update_run(r.info.run_id, name=wanted)
    name = run_name(info, several)
    client.update_run(run_id, name=name)
    return name


def run_params(info: Mapping[str, Any]) -> dict[str, str]:
    """A run's MLflow params from its run.json content ``info``: the flattened resolved config
    (``dataset.*``, ``model.*``, ``train.*``, ...), with the ``train.*`` values training actually
    used (:data:`EFFECTIVE_TRAIN_FIELDS`) instead of the config's. The live logger of a
    training and the track step both log these, so they never disagree."""
    params = _flatten(info.get("config") or {})
    for field in EFFECTIVE_TRAIN_FIELDS:  # what training used, not what the config asked for
        if field in info:
            params[_key(f"train.{field}")] = _param_value(info[field])
    return params


def _run_times(history: list[dict], now: int) -> tuple[int, int]:
    """(start, end) of a training in ms from its history rows: it started when its first
    epoch started (``time - epoch_seconds`` of row 1) and ended with its last row; ``now``
    (ms) where the history says nothing."""
    times = [_to_float(r.get("time")) for r in history]
    durations = [_to_float(r.get("epoch_seconds")) for r in history]
    start_time = now
    if times and times[0] is not None:
        start_time = int((times[0] - (durations[0] or 0.0)) * 1000)
    last_times = [t for t in times if t is not None]
    end_time = int(max(last_times) * 1000) if last_times else now
    return start_time, end_time


def _history_metrics(history: list[dict], logged: Mapping[str, set[int]], now: int) -> list:
    """The per-epoch metrics of history rows as MLflow metrics: step = the ``epoch`` column,
    timestamp = the ``time`` column (ms; ``now`` without one); the (key, step) pairs in
    ``logged`` (key -> steps) and missing values left out."""
    from mlflow.entities import Metric

    metrics = []
    for i, row in enumerate(history):
        step = int(float(row.get("epoch", i)))
        t = _to_float(row.get("time"))
        ts = int(t * 1000) if t is not None else now
        for col in row:
            if col in HISTORY_INDEX_COLUMNS:
                continue
            key, value = _key(col), _to_float(row[col])
            if value is None or step in logged.get(key, ()):
                continue
            metrics.append(Metric(key, value, ts, step))
    return metrics


# --------------------------------------------------------------------------- public: runs


def log_run(
    run_dir: str | os.PathLike,
    *,
    studies: list[str],
    tracking_uri: str,
    profile_path: str | os.PathLike | None = None,
    extra_tags: Mapping[str, Any] | None = None,
    artifact_root: str | os.PathLike | None = None,
    log_model: bool = True,
) -> dict[str, str]:
    """Log one run directory into each study's experiment; return study -> MLflow run id.

    Reads (never writes) ``run.json`` (required), ``history.csv``, ``metrics.json``,
    ``confusion.npy``, ``samples.npz``, ``model.pt`` (unless ``log_model`` is false: the
    config's ``mlflow.log_models``), ``figures/*.png``, the optional profile JSON and the
    prepared dataset's manifest (``results/data/{dataset}/manifest.csv``).

    Each MLflow run is named :func:`run_name` and nested under its study run
    (``study:{study}``) once :func:`log_study` has logged the study. The trained
    model is logged once, as an MLflow model, in the run's *home* study (the first of
    ``studies``: the first in the config citing the run); the runs in the other studies carry
    the tag ``segbench.model_run`` naming the MLflow run that holds it.

    Missing experiments are created (under ``artifact_root``, default
    :func:`default_artifact_root`), but call :func:`init_store` before fanning out.
    The run files are read with the checked readers of :mod:`segbench.runfiles`.
    Raises :class:`TrackingError` if the store cannot be reached or written, and
    :class:`RunFileTrackingError` (whose message is the run file's: the file, what is wrong,
    how to recreate it) if ``run.json`` is missing or a run file or the profile is damaged.
    """
    from segbench import runfiles

    run_dir = Path(run_dir)
    try:
        info = runfiles.read_run(run_dir)
        history = runfiles.read_history(run_dir, info) if (run_dir / "history.csv").is_file() else []
        final = runfiles.read_metrics(run_dir, info) if (run_dir / "metrics.json").is_file() else None
        has_profile = profile_path is not None and Path(profile_path).is_file()
        profile = runfiles.read_profile(profile_path) if has_profile else None
        conf = runfiles.read_confusion(run_dir, info) if (run_dir / "confusion.npy").is_file() else None
        samples = runfiles.read_samples(run_dir) if (run_dir / "samples.npz").is_file() else None
    except runfiles.RunFileError as exc:
        raise RunFileTrackingError(f"{exc} (the run was not logged to MLflow)") from exc
    run_key, config_hash = _run_identity(info)
    params = run_params(info)

    from segbench.io import owned_tempdir

    try:
        client = _connect(tracking_uri)
        tmp = owned_tempdir("segbench-track-")
        try:
            images = []
            if conf is not None:
                images.append(tmp / "confusion_matrix.png")
                _write_confusion_png(conf, list(info.get("class_names") or []), images[-1])
            if samples is not None and len(samples["names"]):
                images.append(tmp / "samples.png")
                _write_samples_png(samples, list(info.get("palette") or []), images[-1])
            dataset = _dataset_of(run_dir, run_key, info)
            ids: dict[str, str] = {}
            home = None  # (study, experiment id, run id) of the run holding the model
            for study in studies:
                ids[study], exp_id = _log_run_into(
                    client, tracking_uri, study, run_dir, tmp,
                    info=info, run_key=run_key, config_hash=config_hash, history=history,
                    final=final, profile=profile, profile_path=profile_path, params=params,
                    extra_tags=extra_tags, artifact_root=artifact_root,
                    log_model=log_model and home is None, model_home=home,
                    images=images, dataset=dataset,
                )
                if home is None:
                    home = (study, exp_id, ids[study])
            return ids
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except TrackingError:
        raise
    except Exception as exc:
        raise _error(f"logging of run {run_key!r}", tracking_uri, exc, run_dir, studies) from exc


def _log_run_into(
    client, tracking_uri, study, run_dir: Path, tmp: Path, *, info, run_key, config_hash,
    history, final, profile, profile_path, params, extra_tags, artifact_root, log_model=True,
    model_home=None, images=(), dataset=None,
) -> tuple[str, str]:
    """Log the run into one study's experiment; returns (MLflow run id, experiment id).
    ``model_home``: (study, experiment id, run id) of the run holding the model when this
    is not the run's home study (then ``log_model`` is false)."""
    from mlflow.entities import Metric, Param, RunTag

    exp_id = _experiment_id(
        client, tracking_uri, study, Path(artifact_root) if artifact_root else None
    )
    now = int(time.time() * 1000)
    start_time, end_time = _run_times(history, now)  # from the files
    tags = _run_tags(client, exp_id, study, run_dir, info, profile_path=profile_path if profile else None,
                     model_home=model_home, extra_tags=extra_tags)

    # Find-or-create and the database writes under the store lock: two processes logging the
    # same run (two `segbench sync` at once) give one MLflow run with one copy of each metric.
    with _store_lock(tracking_uri):
        run, created = _training_run(client, exp_id, info, params, tags, start_time)
        run_id = run.info.run_id

        # Per-epoch metrics (those live logging missed): step = epoch, timestamp = the `time` column.
        logged = {} if created else _metric_history(client, run, _history_keys(history))
        metrics = _history_metrics(history, logged, now)

        # Summary metrics (step 0): logged when absent or when their latest value changed.
        summary: dict[str, float] = {}
        if final is not None:
            for name in FINAL_METRICS:
                if (v := _to_float(final.get(name))) is not None:
                    summary[f"final_{name}"] = v
            names = final.get("class_names") or info.get("class_names") or []
            for i, iou in enumerate(final.get("IoU") or []):
                if (v := _to_float(iou)) is not None:
                    summary[_key(f"final_IoU_{names[i] if i < len(names) else i}")] = v
        best = _best_epoch(history)
        if best is not None:
            summary["best_val_mIoU"], summary["best_epoch"] = best[0], float(best[1])
        if profile is not None:
            for name in PROFILE_METRICS:
                if (v := _to_float(profile.get(name))) is not None:
                    summary[f"profile_{name}"] = v
        latest = {} if created else run.data.metrics
        for key, value in summary.items():
            if latest.get(key) != value:
                metrics.append(Metric(key, value, now, 0))

        existing_params = {} if created else run.data.params
        new_params = [Param(k, v) for k, v in params.items() if k not in existing_params]
        new_tags = [] if created else [RunTag(k, v) for k, v in tags.items() if run.data.tags.get(k) != v]
        if model_home is None and not created and TAG_MODEL_RUN in run.data.tags:
            client.delete_tag(run_id, TAG_MODEL_RUN)  # this study became the run's home
        _log_batch(client, run_id, metrics=metrics, params=new_params, tags=new_tags)
        _name_runs(client, exp_id, run_id, info)
        if dataset is not None:
            _log_dataset(client, client.get_run(run_id), dataset)

    # Artifacts (overwritten in place by the artifact repository).
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name))
    if profile is not None:
        client.log_artifact(run_id, str(profile_path))
    for png in images:
        client.log_artifact(run_id, str(png), artifact_path="images")
    figures = run_dir / "figures"
    if figures.is_dir():
        for png in sorted(figures.glob("*.png")):
            client.log_artifact(run_id, str(png), artifact_path="figures")
    if final is not None and final.get("IoU") is not None:
        names = list(final.get("class_names") or info.get("class_names") or [])
        study_tmp = tmp / study
        study_tmp.mkdir(parents=True, exist_ok=True)
        csv_path, table = _write_iou_table(study_tmp, names, final["IoU"])
        client.log_artifact(run_id, str(csv_path))
        with _store_lock(tracking_uri):  # log_table appends: one writer at a time
            _log_iou_table(client, run_id, table, study_tmp)
    if log_model and (run_dir / "model.pt").is_file() and not client.get_run(run_id).data.tags.get(TAG_MODEL_URI):
        uri = _log_model(client, tracking_uri, run_id, run_dir, info, final)
        client.set_tag(run_id, TAG_MODEL_URI, uri)

    run = client.get_run(run_id)
    if run.info.start_time is not None and run.info.start_time > end_time:
        # a later training of the same config started after these files' training ended (its
        # live run, RUNNING or FAILED): its status is its own, not this finished training's
        _note(f"MLflow run {run_id} ({run_key} in {study}) belongs to a training that started after the "
              f"one in {run_dir} ended; its status {run.info.status} is kept")
    else:  # trained to the end and evaluated: FINISHED, ended with its last epoch (start time kept)
        client.set_terminated(run_id, status="FINISHED", end_time=max(end_time, run.info.start_time or 0))
    return run_id, exp_id


def _run_tags(client, exp_id: str, study: str, run_dir: Path, info: Mapping[str, Any], *,
              profile_path=None, model_home=None, extra_tags=None) -> dict[str, str]:
    """The tags of a training's MLflow run in one study (identity, description, parent study
    run, model home), from its run.json content ``info``; shared by :func:`log_run` and the
    live logger (:class:`LiveRun`). ``profile_path``: the profile logged with it, if any."""
    from segbench import __version__

    run_key, config_hash = _run_identity(info)
    parent_id = _study_run_id(client, exp_id, study)  # None until the study is logged: it nests them
    note = [f"Run `{run_key}` of study `{study}` ({info.get('epochs', '?')} epochs on "
            f"{info.get('device', '?')}). Its files: `{run_dir.resolve()}`."]
    tags = {
        TAG_RUN_KEY: run_key,
        TAG_CONFIG_HASH: config_hash,
        TAG_KIND: "run",
        "study": study,
        "dataset": info.get("dataset", ""),
        "model": info.get("model", ""),
        "loss": info.get("loss", ""),
        "seed": info.get("seed", ""),
        "segbench.run_dir": str(run_dir.resolve()),
        "segbench.version": __version__,
    }
    commit = _git_commit()
    if commit:
        tags["segbench.git_commit"] = commit
    if info.get("device") is not None:
        tags["device"] = info["device"]
    for field in ("device", "epochs", "train_seconds", "resumed_from_epoch", "num_classes"):
        if info.get(field) is not None:
            tags[f"segbench.{field}"] = info[field]
    if profile_path is not None:
        tags["segbench.profile"] = Path(profile_path).name
    if parent_id is not None:
        tags[TAG_PARENT] = parent_id
    if model_home is not None:
        home_study, home_exp, home_run = model_home
        tags[TAG_MODEL_RUN] = home_run
        note.append(f"The trained model is logged once, in this run's copy in study `{home_study}`: "
                    f"[open it](#/experiments/{home_exp}/runs/{home_run}).")
    tags[TAG_NOTE] = "\n\n".join(note)
    tags.update(extra_tags or {})
    return {k: _tag(v) for k, v in tags.items()}


def _training_run(client, exp_id: str, info: Mapping[str, Any], params: Mapping[str, str],
                  tags: Mapping[str, str], start_time: int):
    """Find (by run key and config hash) or create the MLflow run of a training; returns
    (run, created). Call under the store lock. A run whose logged params differ from
    ``params`` is deleted and made afresh (MLflow's params cannot change)."""
    run_key, config_hash = _run_identity(info)
    run, created = _get_or_create_run(
        client, exp_id, tag=TAG_RUN_KEY, value=run_key, config_hash=config_hash,
        run_name=run_name(info), start_time=start_time, tags=tags,
    )
    if not created and any(run.data.params.get(k, v) != v for k, v in params.items()):
        # logged by an older segbench with other param values (train.amp as the config
        # asked, not as training ran): log it afresh
        client.delete_run(run.info.run_id)
        run = client.create_run(exp_id, start_time=start_time, tags=tags, run_name=run_name(info))
        created = True
    return run, created


def _history_keys(history: list[dict]) -> list[str]:
    """The metric keys of history rows (every column but epoch and time)."""
    return list(dict.fromkeys(_key(c) for row in history for c in row if c not in HISTORY_INDEX_COLUMNS))


# --------------------------------------------------------------------------- live logging of a training
#
# A training logs into MLflow as it runs (:class:`LiveRun`), into the MLflow run that the
# track step (:func:`log_run`) later completes: the same identity (tag segbench.run_key,
# config hash), tags, name, parent and params (:func:`_run_tags`, :func:`_training_run`,
# :func:`run_params`). Best effort: every MLflow call is made on one background thread.

LIVE_ENV = "SEGBENCH_MLFLOW_LIVE"  # JSON: {"tracking_uri", "artifact_root", "home": {run key: study}}
LIVE_WAIT_SECONDS = 10.0  # at the end, how long the trainer waits for the logging thread
SYSTEM_EVERY_SECONDS = 10.0  # how often the system metrics are sampled
LIVE_QUEUE_SIZE = 1000  # events waiting for the thread; beyond that, dropped (the track step fills in)
# history.csv columns whose last logged step says up to which epoch a run is logged: train_loss
# is logged every epoch, val_mIoU at validations
LIVE_STEP_KEYS = ("train_loss", "val_mIoU")
SYSTEM_PREFIX = "system/"  # as MLflow's system-metrics monitor: the UI's System metrics tab


def live_env(tracking_uri: str, artifact_root: str | None, home: Mapping[str, str]) -> str:
    """The value of ``$SEGBENCH_MLFLOW_LIVE`` (set by the Snakefile): where trainings log live.
    ``artifact_root``: where new experiments keep their artifacts (None: a tracking server's
    choice); ``home``: run key -> the run's home study (the first study of the config citing it)."""
    return json.dumps({"tracking_uri": tracking_uri, "artifact_root": artifact_root, "home": dict(home)},
                      sort_keys=True)


def live_run_for(run_key: str, *, tracking_uri: str | None = None, study: str | None = None,
                 environ: Mapping[str, str] | None = None) -> "LiveRun | None":
    """The live logger of the training of ``run_key``, or None for no live logging.

    ``tracking_uri`` and ``study`` (``segbench train --tracking-uri URI --study S``, for use by
    hand) win; both or neither must be given. Else ``$SEGBENCH_MLFLOW_LIVE`` (:func:`live_env`)
    says where, with the run's home study; unset: None, silently. An unreadable value, or one
    naming no home for ``run_key``: one warning line on stderr, and None.
    """
    if tracking_uri is not None or study is not None:
        if tracking_uri is None or study is None:
            raise UserError("segbench train: --tracking-uri and --study go together (the MLflow store and "
                            "the study whose experiment the training logs into); give both, or neither")
        return LiveRun(tracking_uri, study)
    text = (os.environ if environ is None else environ).get(LIVE_ENV)
    if not text:
        return None
    try:
        conf = json.loads(text)
        uri, home, root = conf["tracking_uri"], conf["home"][run_key], conf.get("artifact_root")
        if not (isinstance(uri, str) and isinstance(home, str)):
            raise TypeError("tracking_uri and the home study must be strings")
    except (ValueError, KeyError, TypeError) as exc:
        _note(f"warning: ${LIVE_ENV} is unreadable or names no home study for run {run_key} "
              f"({type(exc).__name__}: {exc}); this training is not logged live to MLflow (the track "
              "step logs it after evaluation)")
        return None
    return LiveRun(uri, home, root)


class LiveRun:
    """Logs one training into MLflow while it runs: :meth:`start` (the run RUNNING, its params,
    tags and the epochs of a resumed history), :meth:`epoch` after each epoch (the history row
    as metrics, step = epoch, timestamp = the row's ``time``), :meth:`end` (FINISHED, FAILED
    or KILLED, end time now). Every ``system_every`` seconds in between, system metrics under
    ``system/`` (:func:`_system_metrics`), and once more at the end; step = whole seconds
    since the run's start (so a resumed training's samples follow the earlier ones).

    Best effort, never slowing training: the trainer only enqueues (a full queue drops the
    event, noted once); every MLflow call runs on one background thread, which imports mlflow
    itself; its first exception is printed once as a warning (naming the tracking URI) and
    ends its logging; :meth:`end` waits at most ``wait`` seconds for it. (The one cost left:
    while the thread imports mlflow, about 2 s of CPU at the start, it competes with the
    training for the CPU and the GIL; measured on a tiny CPU run, the first epochs took 2-3 s
    longer in all, the later ones no longer than without logging.) The run directory stays
    the truth: the track step (:func:`log_run`) fills in whatever this missed.

    The MLflow run is found by its run key and config hash (a resumed training continues its
    run, RUNNING again, and logs only the epochs after the last one logged: no step twice) or
    created (start time: the training's start). A run that holds epochs beyond the history
    being resumed (a training started again from scratch) is replaced by a fresh one.
    """

    def __init__(self, tracking_uri: str, study: str, artifact_root: str | os.PathLike | None = None, *,
                 system_every: float = SYSTEM_EVERY_SECONDS, queue_size: int = LIVE_QUEUE_SIZE,
                 wait: float = LIVE_WAIT_SECONDS):
        self.tracking_uri, self.study = tracking_uri, study
        self.wait = wait
        self.artifact_root = Path(artifact_root) if artifact_root else None
        self.system_every = system_every
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._failed = threading.Event()
        self._dropped = False
        # the thread's state
        self._client = None
        self._run_id: str | None = None
        self._run_start = 0.0  # the MLflow run's start time (s)
        self._last_step = 0  # the last epoch logged
        self._next_sample = 0.0  # time.monotonic() of the next system sample

    # -- called by the trainer: start and epoch return at once, end within ``wait`` seconds
    def start(self, info: Mapping[str, Any], run_dir: str | os.PathLike, history: list[dict],
              start_time: float) -> None:
        """Start the thread and log the run's start. ``info``: the training's run.json record
        (its params and tags are logged as run.json will give them to the track step);
        ``history``: the epochs resumed from the checkpoint; ``start_time``: unix seconds."""
        info = json.loads(json.dumps(info))  # as run.json holds it (tuples -> lists, ...)
        self._thread = threading.Thread(target=self._work, name="segbench-mlflow-live", daemon=True)
        self._thread.start()
        self._put(("start", info, Path(run_dir), [dict(r) for r in history], start_time))

    def epoch(self, row: Mapping[str, Any]) -> None:
        """Log a finished epoch's history row (``epoch``: its 1-based number)."""
        self._put(("epoch", dict(row)))

    def end(self, status: str) -> None:
        """Log the end (``FINISHED``, ``FAILED`` or ``KILLED``) and wait at most ``wait``
        seconds (the constructor's) for the thread to log everything queued; then return
        whatever it did."""
        if self._thread is None:
            return
        wait = self.wait
        deadline = time.monotonic() + wait
        self._put(("end", status, time.time()), timeout=wait)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive() and not self._failed.is_set():
            _note(f"warning: MLflow live logging to {self.tracking_uri!r} did not finish within {wait:.0f} s; "
                  "the training ends without waiting for it (the track step fills MLflow in from the run "
                  "directory after evaluation, or `segbench sync`)")

    def _put(self, item: tuple, timeout: float | None = None) -> None:
        if self._failed.is_set():
            return
        try:
            self._queue.put(item, block=timeout is not None, timeout=timeout)
        except queue.Full:
            if not self._dropped:
                self._dropped = True
                _note(f"warning: MLflow live logging to {self.tracking_uri!r} is behind; dropped a {item[0]} "
                      "event (the track step fills MLflow in from the run directory after evaluation)")

    # -- the background thread
    def _work(self) -> None:
        try:
            self._serve()
        except Exception as exc:  # noqa: BLE001 - best effort: training goes on, the track step fills in
            self._failed.set()
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            _note(f"warning: MLflow live logging to {self.tracking_uri!r} stopped ({type(exc).__name__}: "
                  f"{first}); training goes on, and the track step fills MLflow in from the run directory "
                  "after evaluation (or run `segbench sync`)")

    def _serve(self) -> None:
        while True:
            timeout = None if self._run_id is None else max(0.0, self._next_sample - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if self._run_id is not None and time.monotonic() >= self._next_sample:
                self._log_system()
            if item is None:
                continue
            kind, *args = item
            if kind == "start":
                self._start(*args)
            elif kind == "epoch":
                self._epoch(*args)
            else:
                self._end(*args)
                return

    def _start(self, info: dict, run_dir: Path, history: list[dict], start_time: float) -> None:
        from mlflow.entities import Param, RunTag

        client = _connect(self.tracking_uri)
        exp_id = _experiment_id(client, self.tracking_uri, self.study, self.artifact_root)
        params = run_params(info)
        tags = _run_tags(client, exp_id, self.study, run_dir, info)
        now = int(start_time * 1000)
        start_ms = min(now, _run_times(history, now)[0])
        with _store_lock(self.tracking_uri):
            run, created = _training_run(client, exp_id, info, params, tags, start_ms)
            last = 0 if created else _last_logged_epoch(client, run)
            if last > len(history):  # epochs this training has not (re)done: a start from scratch
                client.delete_run(run.info.run_id)
                run = client.create_run(exp_id, start_time=start_ms, tags=tags, run_name=run_name(info))
                created, last = True, 0
            run_id = run.info.run_id
            if created:
                new_params, new_tags = [Param(k, v) for k, v in params.items()], []
            else:
                client.update_run(run_id, status="RUNNING")
                new_params = [Param(k, v) for k, v in params.items() if k not in run.data.params]
                new_tags = [RunTag(k, v) for k, v in tags.items() if run.data.tags.get(k) != v]
            _log_batch(client, run_id, params=new_params, tags=new_tags)
            _name_runs(client, exp_id, run_id, info)
            self._run_start = (run.info.start_time or start_ms) / 1000
        self._client, self._run_id, self._last_step = client, run_id, last
        _system_metrics()  # CPU utilisation is measured from one call to the next: from now on
        self._next_sample = time.monotonic() + self.system_every
        for row in history:  # a resumed training: the epochs it resumes that are not logged yet
            self._epoch(row)

    def _epoch(self, row: dict) -> None:
        step = int(float(row["epoch"]))
        if step <= self._last_step:
            return
        with _store_lock(self.tracking_uri):
            _log_batch(self._client, self._run_id, metrics=_history_metrics([row], {}, int(time.time() * 1000)))
        self._last_step = step

    def _end(self, status: str, end_time: float) -> None:
        self._log_system()  # the last sample: even a short training has one
        with _store_lock(self.tracking_uri):
            self._client.set_terminated(self._run_id, status=status, end_time=int(end_time * 1000))

    def _log_system(self) -> None:
        from mlflow.entities import Metric

        now = time.time()
        step = max(0, int(now - self._run_start))
        metrics = [Metric(SYSTEM_PREFIX + k, v, int(now * 1000), step) for k, v in _system_metrics().items()]
        with _store_lock(self.tracking_uri):
            _log_batch(self._client, self._run_id, metrics=metrics)
        self._next_sample = time.monotonic() + self.system_every


def _last_logged_epoch(client, run) -> int:
    """The last epoch (step) of :data:`LIVE_STEP_KEYS` logged in ``run``; 0 if none."""
    steps = [m.step for key in LIVE_STEP_KEYS if key in run.data.metrics
             for m in client.get_metric_history(run.info.run_id, key)]
    return max(steps, default=0)


def _system_metrics() -> dict[str, float]:
    """System metrics, named as MLflow's monitor names them (without its ``system/`` prefix):
    CPU utilisation (%, since the previous call), the machine's used memory (MB, 1e6 bytes),
    and this process's resident memory (MB); on CUDA, torch's allocated and peak allocated
    memory of the current device (MB). Whatever cannot be read is left out."""
    out: dict[str, float] = {}
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        out["cpu_utilization_percentage"] = float(psutil.cpu_percent(interval=None))
        memory = psutil.virtual_memory()
        out["system_memory_usage_megabytes"] = memory.used / 1e6
        out["system_memory_usage_percentage"] = memory.used / memory.total * 100
        out["process_memory_rss_megabytes"] = psutil.Process().memory_info().rss / 1e6
    torch = sys.modules.get("torch")  # the trainer's: never imported here
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        i = torch.cuda.current_device()
        out[f"gpu_{i}_memory_allocated_megabytes"] = torch.cuda.memory_allocated(i) / 1e6
        out[f"gpu_{i}_max_memory_allocated_megabytes"] = torch.cuda.max_memory_allocated(i) / 1e6
    return out


# --------------------------------------------------------------------------- public: studies


def log_study(
    study: str,
    study_dir: str | os.PathLike,
    *,
    tracking_uri: str,
    artifact_root: str | os.PathLike | None = None,
    note: str | None = None,
    register_best: bool = False,
) -> str:
    """Log the study-level run ``study:{study}`` with every file under tables/ and figures/;
    ``note`` (:func:`study_note`), when given, becomes the experiment's description;
    ``register_best`` (the config's ``mlflow.register_best``): then :func:`register_best_model`.

    The study run is made the parent (``mlflow.parentRunId``) of every run of the study's
    experiment, so MLflow's UI nests them under it; runs logged later find it and nest
    themselves. Idempotent: the run is found by its ``segbench.study_run`` tag and updated
    (artifacts overwritten); duplicates are deleted. Returns the MLflow run id.
    """
    study_dir = Path(study_dir)
    files = [
        p
        for sub in ("tables", "figures")
        if (study_dir / sub).is_dir()
        for p in sorted((study_dir / sub).rglob("*"))
        if p.is_file()
    ]
    try:
        from mlflow.entities import RunTag

        client = _connect(tracking_uri)
        exp_id = _experiment_id(
            client, tracking_uri, study, Path(artifact_root) if artifact_root else None, note
        )
        tags = {
            TAG_KIND: "study",
            TAG_STUDY_RUN: study,
            "study": study,
            "segbench.study_dir": str(study_dir.resolve()),
            TAG_NOTE: _study_run_note(study, study_dir.resolve()),
        }
        with _store_lock(tracking_uri):  # find-or-create: one study run however many writers
            run, created = _get_or_create_run(
                client, exp_id, tag=TAG_STUDY_RUN, value=study, config_hash=None,
                run_name=f"study:{study}", start_time=None, tags=tags,
            )
            run_id = run.info.run_id
            if not created:
                changed = [RunTag(k, v) for k, v in tags.items() if run.data.tags.get(k) != v]
                _log_batch(client, run_id, tags=changed)
            _nest_runs(client, exp_id, run_id)
        for p in files:
            rel_dir = p.parent.relative_to(study_dir).as_posix()
            client.log_artifact(run_id, str(p), artifact_path=rel_dir)
        client.set_terminated(run_id, status="FINISHED")
        if register_best:
            registered = register_best_model(study, tracking_uri)
            if registered is not None:
                _note(f"the best run of study {study} ({registered['run_name']}, final mIoU "
                      f"{registered['final_mIoU']:.4f}) is version {registered['version']} of the registered "
                      f"model {registered['name']}")
        return run_id
    except Exception as exc:
        raise TrackingError(
            f"MLflow logging of study {study!r} failed for tracking URI {tracking_uri!r}: "
            f"{type(exc).__name__}: {exc}. The files under {study_dir} are intact; once the "
            "store is reachable, rerun snakemake (it retries skipped track jobs) or run "
            f"`segbench sync` (everything) or `segbench track-study {study} --dir {study_dir}`."
        ) from exc


def registered_model_name(study: str) -> str:
    """The registered model of a study's best run: ``segbench-{study}``."""
    return f"{EXPERIMENT_PREFIX}{study}"


def register_best_model(study: str, tracking_uri: str) -> dict | None:
    """Register the model of the study's best run (highest ``final_mIoU`` among the runs of
    its experiment whose model is logged: in this study if it is their home, else in the run
    their tag ``segbench.model_run`` names) as a version of the registered model
    :func:`registered_model_name`. A new version only when the best run changed (the latest
    version is of another MLflow run). Returns {"name", "version", "run_id", "run_name",
    "final_mIoU"}, or None when no run of the study has both a final mIoU and a logged model.
    Ties go to the run started last."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = _connect(tracking_uri)
    exp = client.get_experiment_by_name(experiment_name(study))
    if exp is None:
        return None
    best = None  # (final mIoU, the run in this study, the run holding its model)
    for run in _find_runs(client, exp.experiment_id, TAG_KIND, "run"):  # newest first
        miou = run.data.metrics.get("final_mIoU")
        holder = run if TAG_MODEL_URI in run.data.tags else None
        if holder is None and run.data.tags.get(TAG_MODEL_RUN):
            holder = client.get_run(run.data.tags[TAG_MODEL_RUN])
        if miou is None or holder is None or not holder.data.tags.get(TAG_MODEL_URI):
            continue
        if best is None or miou > best[0]:
            best = (miou, run, holder)
    if best is None:
        return None
    miou, run, holder = best
    name = registered_model_name(study)
    with _store_lock(tracking_uri):
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(
                name, description=f"The model of the best run (by final mIoU on the val split) of the segbench "
                                  f"study `{study}`: a new version each time another run becomes the best.")
        versions = client.search_model_versions(f"name = '{name}'")
        latest = max(versions, key=lambda v: int(v.version), default=None)
        if latest is None or latest.run_id != holder.info.run_id:
            mlflow.set_tracking_uri(tracking_uri)
            latest = mlflow.register_model(holder.data.tags[TAG_MODEL_URI], name, await_registration_for=0,
                                           tags={TAG_RUN_KEY: run.data.tags.get(TAG_RUN_KEY, ""),
                                                 "final_mIoU": repr(miou)})
    return {"name": name, "version": int(latest.version), "run_id": holder.info.run_id,
            "run_name": run.info.run_name, "final_mIoU": miou}


# --------------------------------------------------------------------------- records

RECORD_LOGGED = "logged"
RECORD_SKIPPED = "skipped"
SYNC_HINT = (
    "The files on disk are complete; MLflow is only a view of them. Once the store is "
    "reachable, rerun snakemake (it retries the skipped track jobs) or run `segbench sync` "
    "in the workflow directory (with --config FILE for another config than config.yaml)."
)


def read_record(path: str | os.PathLike) -> dict | None:
    """A track job's record, or None if it is missing or unreadable."""
    try:
        rec = _read_json(Path(path))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def record_round(path: str | os.PathLike) -> int:
    """The ``round`` a track job should run under, given its current record.

    A missing record gives 0, a logged one its own round, a skipped one its round + 1. The
    rules pass this as a param and the job stores it in the record it writes, so Snakemake's
    params trigger reruns exactly the track jobs whose record says skipped (and nothing once
    they are logged, whether by that rerun or by ``segbench sync``).
    """
    rec = read_record(path)
    if rec is None:
        return 0
    try:
        n = int(rec.get("round", 0))
    except (TypeError, ValueError):
        n = 0
    return n + 1 if rec.get("status") == RECORD_SKIPPED else n


def write_record(path: str | os.PathLike, *, status: str, round: int = 0, **fields: Any) -> dict:
    """Write a track record (atomically): ``status``, ``round``, the fields, the time."""
    from segbench.io import write_json

    rec = {"status": status, "round": int(round), **fields,
           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if status == RECORD_SKIPPED:
        rec.setdefault("sync", SYNC_HINT)
    write_json(path, rec)
    return rec


# --------------------------------------------------------------------------- sync


def sync(
    results: str | os.PathLike,
    *,
    tracking_uri: str,
    plan_studies: Mapping[str, list[str]] | None = None,
    plan_profiles: Mapping[str, str] | None = None,
    artifact_root: str | os.PathLike | None = None,
    log=print,
    log_model: bool = True,
    study_notes: Mapping[str, str] | None = None,
    register_best: bool = False,
) -> dict:
    """Log every run directory under ``results/runs`` and every study under
    ``results/studies`` into the store, and rewrite their records as logged
    (``register_best``: the config's ``mlflow.register_best``, see :func:`log_study`).

    Idempotent: :func:`log_run` and :func:`log_study` update what is there. A run's studies
    are those the config gives it (``plan_studies``, run key -> studies) together with those
    in its record; its profile likewise (``plan_profiles``, else the record's). A run with no
    study is reported and left out. Records are written in the order the pipeline writes them
    (init, runs, studies), so Snakemake sees no input newer than its output afterwards.
    ``study_notes`` (study -> :func:`study_note`) describe the experiments.
    A run whose files are damaged is left out (its record says skipped, why and what to do)
    and the others are logged; then :class:`RunFileTrackingError` lists the left-out runs.
    Raises :class:`TrackingError` when the store fails.
    Returns ``{"experiments": ..., "runs": {key: {study: id}}, "studies": {study: id},
    "unassigned": [run dirs]}``.
    """
    results = Path(results)
    records = results / "mlflow"
    plan_studies = plan_studies or {}
    plan_profiles = plan_profiles or {}
    if artifact_root is None and not is_server(tracking_uri):
        artifact_root = results / "mlartifacts"  # where the pipeline's track-init puts them

    runs: list[tuple[str, Path, list[str], str | None, Path]] = []
    unassigned: list[str] = []
    for run_json in sorted((results / "runs").rglob("run.json")):
        run_dir = run_json.parent
        key = run_dir.relative_to(results / "runs").as_posix()  # the layout: runs/{run key}/
        record_path = records / "runs" / f"{key}.json"
        rec = read_record(record_path) or {}
        studies = list(dict.fromkeys(
            [*plan_studies.get(key, []), *rec.get("studies", []), *(rec.get("runs") or {})]))
        if not studies:
            unassigned.append(str(run_dir))
            log(f"skipping {run_dir}: run {key} is in no study of the config and has no track record")
            continue
        profile = plan_profiles.get(key) or rec.get("profile")
        runs.append((key, run_dir, studies, profile, record_path))
    study_dirs = sorted(p for p in (results / "studies").glob("*")
                        if (p / "tables").is_dir() or (p / "figures").is_dir())

    all_studies = list(dict.fromkeys(
        [s for _, _, studies, _, _ in runs for s in studies] + [p.name for p in study_dirs]))
    experiments = init_store(tracking_uri, all_studies, artifact_root, study_notes) if all_studies else {}
    init_path = records / "init.json"
    write_record(init_path, status=RECORD_LOGGED, round=_own_round(init_path),
                 tracking_uri=tracking_uri, experiments=experiments)
    _touch_benchmark(results, init_path)
    log(f"MLflow store {tracking_uri}: {len(experiments)} experiments")

    logged_runs: dict[str, dict[str, str]] = {}
    left_out: list[str] = []
    for key, run_dir, studies, profile, record_path in runs:
        try:
            ids = log_run(run_dir, studies=studies, tracking_uri=tracking_uri,
                          profile_path=profile, artifact_root=artifact_root, log_model=log_model)
        except RunFileTrackingError as exc:  # this run's files, not the store: go on with the rest
            write_record(record_path, status=RECORD_SKIPPED, round=_own_round(record_path),
                         tracking_uri=tracking_uri, reason=str(exc), run_dir=str(run_dir),
                         studies=studies, profile=profile)
            left_out.append(str(exc))
            log(f"skipping {run_dir}: {exc}")
            continue
        write_record(record_path, status=RECORD_LOGGED, round=_own_round(record_path),
                     tracking_uri=tracking_uri, runs=ids, run_dir=str(run_dir),
                     studies=studies, profile=profile)
        _touch_benchmark(results, record_path)
        logged_runs[key] = ids
        log(f"logged run {key}: {ids}")

    logged_studies: dict[str, str] = {}
    for study_dir in study_dirs:
        record_path = records / "studies" / f"{study_dir.name}.json"
        run_id = log_study(study_dir.name, study_dir, tracking_uri=tracking_uri,
                           artifact_root=artifact_root, register_best=register_best)
        write_record(record_path, status=RECORD_LOGGED, round=_own_round(record_path),
                     tracking_uri=tracking_uri, study=study_dir.name, run_id=run_id,
                     dir=str(study_dir))
        _touch_benchmark(results, record_path)
        logged_studies[study_dir.name] = run_id
        log(f"logged study {study_dir.name}: run {run_id}")
    if left_out:
        raise RunFileTrackingError(
            f"{len(left_out)} run(s) left out of MLflow because a file is damaged (everything else "
            "is synced; run `segbench sync` again once they are recreated):\n" + "\n".join(left_out))
    return {"experiments": experiments, "runs": logged_runs, "studies": logged_studies,
            "unassigned": unassigned}


def _touch_benchmark(results: Path, record_path: Path) -> None:
    """Snakemake counts a job's benchmark file (results/benchmarks/mlflow/..., beside the
    record's path) as one of its outputs when it checks whether inputs are newer: touch the
    one of the track job whose record was just rewritten, so the records sync rewrote before
    it (init, then runs) do not make the job look outdated."""
    try:
        rel = record_path.relative_to(results)
    except ValueError:
        return
    bench = results / "benchmarks" / rel.with_suffix(".tsv")
    if bench.is_file():
        os.utime(bench)


def _own_round(path: Path) -> int:
    """The round a record was written under (kept when sync rewrites it, so the params of
    the job that wrote it still match and Snakemake does not rerun it)."""
    rec = read_record(path) or {}
    try:
        return int(rec.get("round", 0))
    except (TypeError, ValueError):
        return 0
