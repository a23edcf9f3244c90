"""segbench.tracking: MLflow as an idempotent view of run directories (sqlite store in tmp)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
try:
    import segbench  # noqa: F401
except ImportError:  # not installed in the venv: use the source tree
    sys.path.insert(0, str(SRC))

import segbench  # noqa: E402
from segbench import tracking  # noqa: E402
from segbench.tracking import TrackingError  # noqa: E402

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import ViewType  # noqa: E402

torch = pytest.importorskip("torch")
from segbench.models import build_model  # noqa: E402

CLASS_NAMES = ["road", "sky", "traffic light"]
T0 = 1_760_000_000.0  # unix time at the end of epoch 1
STUDIES = ["main", "ablation"]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store per module (creating one costs a few seconds)."""
    root = tmp_path_factory.mktemp("results")
    uri = tracking.default_tracking_uri(root)
    t = time.perf_counter()
    ids = tracking.init_store(uri, STUDIES, root / "mlartifacts")
    elapsed = time.perf_counter() - t
    print(f"\ninit_store on a fresh sqlite store: {elapsed:.2f} s")
    return {"uri": uri, "root": root, "ids": ids, "client": MlflowClient(uri)}


def history_row(epoch: int) -> dict:
    return {
        "epoch": epoch,
        "train_loss": 1.0 / epoch,
        "train_mIoU": 0.1 * epoch,
        "train_aAcc": 0.5 + 0.1 * epoch,
        "val_loss": 1.5 / epoch,
        "val_mIoU": 0.05 * epoch + 0.01,
        "val_aAcc": 0.4 + 0.1 * epoch,
        "lr": 0.01 / epoch,
        "skipped_batches": 0,
        "epoch_seconds": 10.0,
        "time": T0 + 10.0 * (epoch - 1),
    }


def write_history(run_dir: Path, epochs: int) -> None:
    rows = [history_row(e) for e in range(1, epochs + 1)]
    cols = list(rows[0])
    lines = [",".join(cols)] + [",".join(repr(r[c]) for c in cols) for r in rows]
    (run_dir / "history.csv").write_text("\n".join(lines) + "\n")


def make_run(base: Path, *, seed: int, config_hash: str = "abc123", epochs: int = 3,
             lr: float = 0.01, dataset: str = "synthetic") -> tuple[Path, str]:
    """A run directory in the formats of docs/outputs.md."""
    key = f"{dataset}/unet_small/ce/s{seed}"
    run_dir = base / "runs" / key
    run_dir.mkdir(parents=True)
    config = {
        "dataset": {"name": "synthetic", "input_size": [64, 128]},
        "model": {"name": "unet_small", "arch": "unet", "params": {"width": 2}, "channels": [16, 32, 64]},
        "loss": {"name": "ce", "weights": None},
        "optim": {"name": "adamw", "lr": lr, "betas": [0.9, 0.999]},
        "train": {"epochs": epochs, "batch_size": 4, "amp": True},  # asked for; run.json: not used
        "notes": "x" * 7000,  # longer than MLflow's 6000-char param limit
        "seed": seed,
    }
    (run_dir / "run.json").write_text(json.dumps({
        "run_key": key, "dataset": dataset, "model": "unet_small", "loss": "ce",
        "seed": seed, "config": config, "config_hash": config_hash, "num_classes": 3,
        "class_names": CLASS_NAMES, "palette": [[128, 64, 128], [70, 130, 180], [250, 170, 30]],
        "device": "cpu", "epochs": epochs, "train_seconds": 30.0, "resumed_from_epoch": None,
        "amp": False, "channels_last": True, "threads": 1, "workers": 0,
    }, indent=2))
    write_history(run_dir, epochs)
    (run_dir / "metrics.json").write_text(json.dumps({
        "run_key": key, "mIoU": 0.55, "aAcc": 0.8, "mAcc": 0.6, "mDice": 0.65, "IoU": [0.7, 0.4, float("nan")],
        "class_names": CLASS_NAMES, "num_images": 8, "input_size": [64, 128],
    }))
    np.save(run_dir / "confusion.npy", np.arange(9, dtype=np.int64).reshape(3, 3))
    torch.save(build_model("unet", 3, width=2).state_dict(), run_dir / "model.pt")
    k, h, w = 2, 16, 32
    np.savez(run_dir / "samples.npz", images=np.full((k, h, w, 3), 90, np.uint8),
             labels=np.ones((k, h, w), np.uint8), preds=np.zeros((k, h, w), np.uint8),
             names=np.array(["val/a.png", "val/b.png"]))
    (run_dir / "figures").mkdir()
    (run_dir / "figures" / "samples.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    return run_dir, key


def make_profile(base: Path) -> Path:
    path = base / "profiles" / "unet_small-c3-64x128.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "model": "unet_small", "arch": "unet", "num_classes": 3, "input_size": [64, 128],
        "params": 123456, "macs": 7.5e8, "size_mb": 0.49, "fps": 42.0, "fps_batch": 1,
        "device": "cpu", "threads": 2, "warmup": 5, "iterations": 20,
    }))
    return path


def runs_with_key(client, exp_id: str, key: str, view=ViewType.ACTIVE_ONLY):
    return client.search_runs(
        [exp_id], filter_string=f"tags.`segbench.run_key` = '{key}'", run_view_type=view
    )


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, f.path) if f.is_dir else {f.path}
    return out


# --------------------------------------------------------------------------- tests


def test_import_is_cheap():
    code = "import sys, segbench.tracking; assert 'mlflow' not in sys.modules, 'mlflow imported'"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_default_tracking_uri(tmp_path):
    assert tracking.default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking.experiment_name("main") == "segbench-main"


def test_init_store_creates_and_reuses_experiments(store):
    client, root = store["client"], store["root"]
    for study in STUDIES:
        exp = client.get_experiment_by_name(f"segbench-{study}")
        assert exp is not None and exp.experiment_id == store["ids"][study]
        assert exp.artifact_location == (root / "mlartifacts" / study).resolve().as_uri()
    # Deleted experiments are restored, existing ones reused: same ids.
    client.delete_experiment(store["ids"]["ablation"])
    again = tracking.init_store(store["uri"], STUDIES, root / "mlartifacts")
    assert again == store["ids"]
    assert client.get_experiment(again["ablation"]).lifecycle_stage == "active"


def test_log_run_tags_params_metrics_artifacts(store, tmp_path):
    client = store["client"]
    run_dir, key = make_run(tmp_path, seed=0)
    profile = make_profile(tmp_path)
    before = snapshot(tmp_path)
    t = time.perf_counter()
    ids = tracking.log_run(run_dir, studies=STUDIES, tracking_uri=store["uri"],
                           profile_path=profile, extra_tags={"segbench.host": "ci"})
    print(f"\nlog_run (2 studies, new runs): {time.perf_counter() - t:.2f} s")
    assert set(ids) == set(STUDIES) and len(set(ids.values())) == 2
    assert snapshot(tmp_path) == before  # the run directory is only read

    for study in STUDIES:
        runs = runs_with_key(client, store["ids"][study], key)
        assert [r.info.run_id for r in runs] == [ids[study]]
        run = runs[0]
        assert run.info.run_name == "unet_small · ce · s0"
        assert run.info.status == "FINISHED"
        tags = run.data.tags
        assert tags["segbench.run_key"] == key
        assert tags["segbench.config_hash"] == "abc123"
        assert (tags["study"], tags["dataset"], tags["model"], tags["loss"], tags["seed"]) == (
            study, "synthetic", "unet_small", "ce", "0")
        assert tags["segbench.host"] == "ci"

        params = run.data.params
        assert params["optim.lr"] == "0.01"
        assert params["optim.name"] == "adamw"
        assert json.loads(params["model.channels"]) == [16, 32, 64]
        assert json.loads(params["optim.betas"]) == [0.9, 0.999]
        # what training used (run.json), not what the config asked for (amp: True)
        assert (params["train.amp"], params["train.channels_last"], params["train.device"]) == (
            "False", "True", "cpu")
        assert params["loss.weights"] == "None"
        assert len(params["notes"]) == 6000

        hist = client.get_metric_history(ids[study], "val_mIoU")
        assert sorted((m.step, m.value, m.timestamp) for m in hist) == [
            (e, pytest.approx(0.05 * e + 0.01), int((T0 + 10.0 * (e - 1)) * 1000))
            for e in (1, 2, 3)
        ]
        assert "epoch" not in run.data.metrics and "time" not in run.data.metrics
        assert run.data.metrics["train_loss"] == pytest.approx(1.0 / 3)
        m = run.data.metrics
        assert (m["final_mIoU"], m["final_aAcc"], m["final_mAcc"], m["final_mDice"]) == (
            0.55, 0.8, 0.6, 0.65)
        assert m["final_IoU_road"] == 0.7 and m["final_IoU_sky"] == 0.4
        assert not any(k.startswith("final_IoU_traffic") for k in m)  # NaN class skipped
        assert (m["profile_params"], m["profile_macs"], m["profile_fps"], m["profile_size_mb"]) == (
            123456, 7.5e8, 42.0, 0.49)
        # start = end of epoch 1 minus its duration; end = end of the last epoch
        assert run.info.start_time == int((T0 - 10.0) * 1000)
        assert run.info.end_time == int((T0 + 20.0) * 1000)

        arts = artifact_paths(client, ids[study])
        assert {"metrics.json", "history.csv", "run.json", "confusion.npy", "iou_per_class.csv",
                "iou_per_class.json", "figures/samples.png", "images/confusion_matrix.png",
                "images/samples.png", profile.name} <= arts
        assert not any(p.endswith("model.pt") for p in arts)  # the model is an MLflow model
        local = Path(client.download_artifacts(ids[study], "iou_per_class.csv", str(tmp_path / study)))
        assert local.read_text().splitlines() == [
            "class,IoU", "road,0.7", "sky,0.4", "traffic light,"]
        assert run.info.artifact_uri.startswith(
            (store["root"] / "mlartifacts" / study).resolve().as_uri())


def test_relog_is_idempotent_and_appends_new_epochs(store, tmp_path):
    client, exp = store["client"], store["ids"]["main"]
    run_dir, key = make_run(tmp_path, seed=1)
    first = tracking.log_run(run_dir, studies=["main"], tracking_uri=store["uri"])["main"]
    t = time.perf_counter()
    second = tracking.log_run(run_dir, studies=["main"], tracking_uri=store["uri"])["main"]
    print(f"\nlog_run (1 study, unchanged re-log): {time.perf_counter() - t:.2f} s")
    assert first == second
    assert len(runs_with_key(client, exp, key, ViewType.ALL)) == 1
    run = client.get_run(first)
    for metric in list(run.data.metrics):
        hist = client.get_metric_history(first, metric)
        steps = [m.step for m in hist]
        assert len(steps) == len(set(steps)), f"duplicate points for {metric}: {steps}"
    assert len(client.get_metric_history(first, "val_mIoU")) == 3
    assert len(client.get_metric_history(first, "final_mIoU")) == 1
    # the MLflow table is overwritten, not appended to
    table = json.loads(Path(client.download_artifacts(first, "iou_per_class.json",
                                                      str(tmp_path / "dl"))).read_text())
    assert len(table["data"]) == len(CLASS_NAMES)

    # Training resumed for one more epoch: exactly that point is added.
    write_history(run_dir, 4)
    info = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**info, "epochs": 4}))
    third = tracking.log_run(run_dir, studies=["main"], tracking_uri=store["uri"])["main"]
    assert third == first
    hist = client.get_metric_history(first, "val_mIoU")
    assert sorted(m.step for m in hist) == [1, 2, 3, 4]
    assert [m.value for m in hist if m.step == 4] == [pytest.approx(0.21)]
    assert len(client.get_metric_history(first, "lr")) == 4
    assert client.get_run(first).info.end_time == int((T0 + 30.0) * 1000)

    # A re-evaluation that changes a final metric adds one point; the latest value wins.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["mIoU"] = 0.6
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    tracking.log_run(run_dir, studies=["main"], tracking_uri=store["uri"])
    assert client.get_run(first).data.metrics["final_mIoU"] == 0.6
    assert len(client.get_metric_history(first, "final_mIoU")) == 2
    assert len(runs_with_key(client, exp, key, ViewType.ALL)) == 1


def test_changed_config_hash_replaces_run(store, tmp_path):
    client, exp = store["client"], store["ids"]["main"]
    run_dir, key = make_run(tmp_path, seed=2)
    old = tracking.log_run(run_dir, studies=["main"], tracking_uri=store["uri"])["main"]
    shutil_rm(run_dir)
    run_dir, _ = make_run(tmp_path, seed=2, config_hash="def456", lr=0.02)
    new = tracking.log_run(run_dir, studies=["main"], tracking_uri=store["uri"])["main"]
    assert new != old
    active = runs_with_key(client, exp, key)
    assert [r.info.run_id for r in active] == [new]
    assert active[0].data.tags["segbench.config_hash"] == "def456"
    assert active[0].data.params["optim.lr"] == "0.02"
    assert client.get_run(old).info.lifecycle_stage == "deleted"
    assert len(client.get_metric_history(new, "val_mIoU")) == 3


def shutil_rm(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


def test_the_view_a_researcher_expects(store, tmp_path):
    """Experiments open on their runs with the study's description; runs have short names,
    nest under the study run, carry the dataset, best-epoch metrics, images and tags; the
    model is logged once (an MLflow model with a signature) and the other copy points to it."""
    import mlflow.pytorch
    from mlflow.models import get_model_info

    client, uri = store["client"], store["uri"]
    studies = ["home", "other"]
    ids = tracking.init_store(uri, studies, notes={"home": "GraDNet vs U-Net, 3 epochs"})
    for study in studies:
        tags = client.get_experiment(ids[study]).tags
        assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(ids["home"]).tags["mlflow.note.content"] == "GraDNet vs U-Net, 3 epochs"
    tracking.init_store(uri, studies, notes={"home": "GraDNet vs U-Net, 5 epochs"})  # description changed
    assert client.get_experiment(ids["home"]).tags["mlflow.note.content"] == "GraDNet vs U-Net, 5 epochs"

    run_dir, key = make_run(tmp_path, seed=10)
    manifest = tmp_path / "data" / "synthetic" / "manifest.csv"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("split,image,label\ntrain,a.png,a_l.png\ntrain,b.png,b_l.png\nval,c.png,c_l.png\n")
    out = tracking.log_run(run_dir, studies=studies, tracking_uri=uri)
    again = tracking.log_run(run_dir, studies=studies, tracking_uri=uri)
    assert again == out
    home, other = client.get_run(out["home"]), client.get_run(out["other"])

    # the model: once, in the home study, loadable, with the signature of the evaluation size
    models = client.search_logged_models(experiment_ids=[ids["home"], ids["other"]])
    assert [m.source_run_id for m in models] == [out["home"]]
    model_uri = home.data.tags["segbench.model_uri"]
    sig = get_model_info(model_uri).signature
    assert sig.inputs.inputs[0].shape == (-1, 3, 64, 128) and str(sig.inputs.inputs[0].type) == "float32"
    assert sig.outputs.inputs[0].shape == (-1, 3, 64, 128)
    model = mlflow.pytorch.load_model(model_uri)
    with torch.no_grad():
        assert tuple(model(torch.zeros(1, 3, 64, 128)).shape) == (1, 3, 64, 128)
    assert "segbench.model_uri" not in other.data.tags
    assert other.data.tags["segbench.model_run"] == out["home"]
    assert f"#/experiments/{ids['home']}/runs/{out['home']}" in other.data.tags["mlflow.note.content"]

    for study, run in (("home", home), ("other", other)):
        # the study run, logged with the study's tables, is the parent of the study's runs
        assert "mlflow.parentRunId" not in run.data.tags
        (tmp_path / "studies" / study / "tables").mkdir(parents=True)
        (tmp_path / "studies" / study / "tables" / "summary.md").write_text("| model |\n")
        study_run = tracking.log_study(study, tmp_path / "studies" / study, tracking_uri=uri)
        assert client.get_run(run.info.run_id).data.tags["mlflow.parentRunId"] == study_run
        assert client.get_run(study_run).info.run_name == f"study:{study}"
        # the dataset: split sizes and the manifest's digest, once however often it is logged
        (inp,) = run.inputs.dataset_inputs
        assert inp.dataset.name == "synthetic"
        assert inp.dataset.digest == hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]
        assert json.loads(inp.dataset.profile) == {"num_rows": 2, "num_elements": 4}
        # the best epoch beside the final metrics (val_mIoU = 0.05 * epoch + 0.01, 3 epochs)
        assert run.data.metrics["best_val_mIoU"] == pytest.approx(0.16)
        assert run.data.metrics["best_epoch"] == 3
        tags = run.data.tags
        assert tags["device"] == "cpu" and tags["segbench.version"] == segbench.__version__
        git = subprocess.run(["git", "-C", str(SRC), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert tags.get("segbench.git_commit") == (git.stdout.strip() if git.returncode == 0 else None)
        for png in ("images/confusion_matrix.png", "images/samples.png"):
            local = Path(client.download_artifacts(run.info.run_id, png, str(tmp_path / "dl" / study)))
            assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and local.stat().st_size > 5_000, png

    # a second dataset in a study: every run's name leads with its dataset; a run logged
    # after its study nests itself under the study run
    run2, _ = make_run(tmp_path, seed=10, dataset="voc")
    second = client.get_run(tracking.log_run(run2, studies=["home"], tracking_uri=uri)["home"])
    assert second.info.run_name == "voc · unet_small · ce · s10"
    assert second.data.tags["mlflow.parentRunId"] == client.get_run(out["home"]).data.tags["mlflow.parentRunId"]
    assert client.get_run(out["home"]).info.run_name == "synthetic · unet_small · ce · s10"


def test_log_run_finishes_the_live_run_of_its_training_but_not_a_later_trainings(store, tmp_path):
    """The track step (after evaluation) marks FINISHED the MLflow run that live logging made
    for the training whose files it logs (started before they ended; here left KILLED, as by
    a job cancelled and then resumed to the end), keeping its start time; a run that a later
    training of the same config started after those files' training ended keeps its status."""
    client, uri, exp = store["client"], store["uri"], store["ids"]["main"]

    def live_run(key, start_s, status):
        run = client.create_run(exp, start_time=int(start_s * 1000), tags={
            "segbench.run_key": key, "segbench.config_hash": "abc123", "segbench.kind": "run"})
        client.log_metric(run.info.run_id, "train_loss", 0.5, timestamp=int(T0 * 1000), step=1)
        client.set_terminated(run.info.run_id, status=status, end_time=int((start_s + 15) * 1000))
        return run.info.run_id

    run_dir, key = make_run(tmp_path, seed=7)  # its epochs end at T0, T0 + 10, T0 + 20
    own = live_run(key, T0 - 30.0, "KILLED")
    assert tracking.log_run(run_dir, studies=["main"], tracking_uri=uri, log_model=False) == {"main": own}
    run = client.get_run(own)
    assert (run.info.status, run.info.start_time, run.info.end_time) == (
        "FINISHED", int((T0 - 30.0) * 1000), int((T0 + 20.0) * 1000))
    assert [m.step for m in client.get_metric_history(own, "train_loss")] == [1, 2, 3]

    run_dir, key = make_run(tmp_path, seed=8)
    later = live_run(key, T0 + 3600.0, "FAILED")  # retrained an hour after these files' training
    assert tracking.log_run(run_dir, studies=["main"], tracking_uri=uri, log_model=False) == {"main": later}
    run = client.get_run(later)
    assert (run.info.status, run.info.start_time) == ("FAILED", int((T0 + 3600.0) * 1000))


def test_log_study(store, tmp_path):
    client = store["client"]
    study_dir = tmp_path / "studies" / "main"
    (study_dir / "tables").mkdir(parents=True)
    (study_dir / "figures").mkdir()
    (study_dir / "tables" / "summary.csv").write_text("dataset,model\nsynthetic,unet_small\n")
    (study_dir / "tables" / "summary.md").write_text("| dataset | model |\n")
    (study_dir / "figures" / "curves.png").write_bytes(b"\x89PNG fake")
    (study_dir / "other.txt").write_text("not logged")
    run_id = tracking.log_study("main", study_dir, tracking_uri=store["uri"])
    assert tracking.log_study("main", study_dir, tracking_uri=store["uri"]) == run_id
    runs = client.search_runs([store["ids"]["main"]],
                              filter_string="tags.`segbench.study_run` = 'main'")
    assert [r.info.run_id for r in runs] == [run_id]
    run = runs[0]
    assert run.info.run_name == "study:main"
    assert run.data.tags["segbench.kind"] == "study"
    assert run.info.status == "FINISHED"
    assert artifact_paths(client, run_id) == {
        "tables/summary.csv", "tables/summary.md", "figures/curves.png"}


def test_unreachable_store_raises_quickly_and_keeps_files(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = "http://127.0.0.1:9"
    run_dir, _ = make_run(tmp_path, seed=3)
    before = snapshot(tmp_path)
    t = time.perf_counter()
    with pytest.raises(TrackingError) as err:
        tracking.log_run(run_dir, studies=["main"], tracking_uri=uri)
    assert time.perf_counter() - t < 15
    assert uri in str(err.value) and "segbench track" in str(err.value)
    with pytest.raises(TrackingError):
        tracking.init_store(uri, ["main"], tmp_path / "mlartifacts")
    with pytest.raises(TrackingError):
        tracking.log_study("main", tmp_path, tracking_uri=uri)
    assert snapshot(tmp_path) == before


def test_missing_experiment_is_created_on_demand(store, tmp_path):
    """log_run without init_store still works (the lock guards the creation)."""
    run_dir, key = make_run(tmp_path, seed=4)
    art = tmp_path / "arts"
    ids = tracking.log_run(run_dir, studies=["adhoc"], tracking_uri=store["uri"], artifact_root=art)
    exp = store["client"].get_experiment_by_name("segbench-adhoc")
    assert exp.artifact_location == (art / "adhoc").resolve().as_uri()
    assert [r.info.run_id for r in runs_with_key(store["client"], exp.experiment_id, key)] == [
        ids["adhoc"]]
    assert not math.isnan(store["client"].get_run(ids["adhoc"]).data.metrics["final_mIoU"])


@pytest.mark.slow
def test_parallel_writers_on_a_fresh_store(tmp_path):
    """Without init_store, concurrent log_run calls on a FRESH sqlite db must not race in the
    migrations (the flock beside the db serialises the first connection)."""
    uri = tracking.default_tracking_uri(tmp_path / "results")
    script = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "from pathlib import Path; import test_tracking as T; from segbench import tracking\n"
        "rd, _ = T.make_run(Path(sys.argv[3]), seed=int(sys.argv[4]))\n"
        "tracking.log_run(rd, studies=['main'], tracking_uri=sys.argv[5])\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(SRC), str(Path(__file__).parent),
                          str(tmp_path / f"w{i}"), str(i), uri],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(3)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(outs)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("segbench-main")
    assert len(client.search_runs([exp.experiment_id])) == 3


def test_study_note_describes_the_study_and_its_training_scale():
    """The experiment's description, from the repository's config: the study's description,
    what it compares and the training scale its runs share."""
    import yaml

    from segbench.config import load_config
    from segbench.plan import Plan

    root = SRC.parent
    raw = yaml.safe_load((root / "config.yaml").read_text())
    note = tracking.study_note(Plan(load_config(root / "config.yaml")), "pac_bal")
    spec, train = raw["studies"]["pac_bal"], raw["train"]
    assert note.startswith(spec["description"])
    assert f"- models: {', '.join(spec['models'])}" in note  # then the ablation's
    assert f"{train['epochs']} epochs, crop {train['crop'][0]}x{train['crop'][1]} (HxW)" in note
    width = raw["models"]["deeplabv3"]["params"]["width"]
    assert f"deeplabv3 (depth 50, width {width})" in note
