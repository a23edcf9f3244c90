"""The real Snakefile, end to end, on a tiny config in a temporary directory."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = yaml.safe_load((ROOT / "tests" / "data" / "tiny_config.yaml").read_text())


def snakemake(workdir, *args, check=True):
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", SEGBENCH_NO_PROGRESS="1")
    proc = subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
         "--cores", "2", *args],
        capture_output=True, text=True, env=env, timeout=900)
    if check and proc.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in Path(workdir, "results", "logs").rglob("*.log"))
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-6000:]}\n{logs}")
    return proc


#: the umask the pipeline runs under: a shared project folder's (group may write)
UMASK = 0o002


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("pipeline")
    (wd / "config.yaml").write_text(yaml.safe_dump(TINY))
    old = os.umask(UMASK)
    try:
        snakemake(wd)
    finally:
        os.umask(old)
    return wd


@pytest.mark.slow
def test_outputs_of_every_step(workdir):
    res = workdir / "results"
    manifest = (res / "data/synthetic/manifest.csv").read_text().splitlines()
    assert manifest[0].startswith("split,image,label") and len(manifest) == 1 + 8 + 4
    for model in ("unet", "segnet"):
        run = res / f"runs/synthetic/{model}/ce/s0"
        for name in ("model.pt", "history.csv", "run.json", "metrics.json", "confusion.npy", "samples.npz"):
            assert (run / name).stat().st_size > 0, name
        assert len((run / "history.csv").read_text().splitlines()) == 1 + 2
        metrics = json.loads((run / "metrics.json").read_text())
        assert 0.0 <= metrics["mIoU"] <= 1.0 and len(metrics["IoU"]) == 19
        assert (res / f"profiles/{model}-c19-64x128.json").exists()
    for study, n in (("unet_segnet", 2), ("unet_only", 1)):
        table = (res / f"studies/{study}/tables/summary.csv").read_text().splitlines()
        assert len(table) == 1 + n
        pngs = sorted((res / f"studies/{study}/figures").glob("*.png"))
        assert len(pngs) >= 4 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


@pytest.mark.slow
def test_mlflow_holds_one_run_per_study_and_run(workdir):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/results/mlflow.db")
    for study, models in (("unet_segnet", {"unet", "segnet"}), ("unet_only", {"unet"})):
        exp = client.get_experiment_by_name(f"segbench-{study}")
        assert exp is not None, study
        runs = client.search_runs([exp.experiment_id], "tags.`segbench.run_key` LIKE 'synthetic/%'")
        assert {r.data.tags["segbench.run_key"].split("/")[1] for r in runs} == models
        assert len(runs) == len(models)
        for r in runs:
            history = client.get_metric_history(r.info.run_id, "val_mIoU")
            assert [m.step for m in history] == [1, 2]
            assert "final_mIoU" in r.data.metrics


@pytest.mark.slow
def test_result_files_follow_the_umask(workdir):
    """Under umask 002 every file the pipeline writes is 0664 and every folder 0775 (as any
    file the user writes), so colleagues and a tracking server running as another user can
    read them; segbench's atomic writes once left every result 0600."""
    res = workdir / "results"
    modes = {p.relative_to(res).as_posix(): p.stat().st_mode & 0o777 for p in res.rglob("*") if not p.is_symlink()}
    files = {k: m for k, m in modes.items() if (res / k).is_file()}
    assert "runs/synthetic/unet/ce/s0/model.pt" in files and "studies/unet_segnet/tables/summary.csv" in files
    assert {k: oct(m) for k, m in files.items() if m != 0o664} == {}
    assert {k: oct(m) for k, m in modes.items() if k not in files and m != 0o775} == {}


@pytest.mark.slow
def test_a_run_file_deleted_by_hand_is_made_again(workdir, tmp_path):
    """model.pt, history.csv and metrics.json removed by hand: snakemake plans their jobs
    (it once said "Nothing to be done") and makes them again with the same content."""
    import torch

    wd = tmp_path / "copy"
    shutil.copytree(workdir, wd, symlinks=True)
    run = wd / "results/runs/synthetic/unet/ce/s0"
    before = {name: (run / name).read_bytes() for name in ("history.csv", "metrics.json")}
    model_before = torch.load(run / "model.pt", weights_only=True)
    for name in ("model.pt", "history.csv", "metrics.json"):
        (run / name).unlink()
    plan = snakemake(wd, "-n")
    out = plan.stdout + plan.stderr
    import re

    for rule in ("train", "evaluate"):  # the Job stats table: one job each, the unet run's
        assert re.search(rf"^{rule}\s+1$", out, re.M), out
    assert re.search(r"Missing output files: [^\n]*results/runs/synthetic/unet/ce/s0/model\.pt", out), out
    snakemake(wd)
    model_after = torch.load(run / "model.pt", weights_only=True)
    assert model_after.keys() == model_before.keys()
    assert all(torch.equal(model_after[k], model_before[k]) for k in model_before)

    def results(text: str, drop: set) -> list:
        import csv, io
        rows = list(csv.DictReader(io.StringIO(text)))
        return [{k: v for k, v in r.items() if k not in drop} for r in rows]

    assert results((run / "history.csv").read_text(), {"epoch_seconds", "time"}) == \
        results(before["history.csv"].decode(), {"epoch_seconds", "time"})
    drop = {"eval_seconds", "metric_mpixel_per_s", "claim_metrics_seconds"}
    after_m = {k: v for k, v in json.loads((run / "metrics.json").read_text()).items() if k not in drop}
    before_m = {k: v for k, v in json.loads(before["metrics.json"]).items() if k not in drop}
    assert json.dumps(after_m, sort_keys=True) == json.dumps(before_m, sort_keys=True)
    assert "Nothing to be done" in (lambda p: p.stdout + p.stderr)(snakemake(wd, "-n"))


@pytest.mark.slow
def test_second_run_has_nothing_to_do(workdir):
    proc = snakemake(workdir, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_changing_one_model_reruns_only_its_jobs(workdir, tmp_path):
    wd = tmp_path / "copy"
    shutil.copytree(workdir, wd, symlinks=True)
    cfg = yaml.safe_load((wd / "config.yaml").read_text())
    cfg["models"]["unet"]["params"]["width"] = 6
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(wd, "-n", "--quiet", "rules")
    out = proc.stdout + proc.stderr
    train_lines = [line for line in out.splitlines() if line.strip().startswith("train ")]
    assert train_lines and train_lines[0].split()[1] == "1", out
    proc = snakemake(wd, "-n", "-p")
    assert "runs/synthetic/unet/ce/s0" in proc.stdout
    assert "runs/synthetic/segnet/ce/s0 " not in proc.stdout and "--out results/runs/synthetic/segnet" not in proc.stdout


@pytest.mark.slow
def test_invalid_config_stops_before_any_job(tmp_path):
    bad = json.loads(json.dumps(TINY))
    bad["models"]["unet"]["params"]["widht"] = 3
    bad["studies"]["unet_only"]["losses"] = ["dice"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(bad))
    proc = snakemake(tmp_path, check=False)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "models.unet.params" in err and "'widht'" in err
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------ studies as the papers' experiments
@pytest.mark.slow
def test_paper_tables_ablations_and_cross_study(workdir):
    import pandas as pd

    res = workdir / "results" / "studies"
    # pac_bal: Table 3 over the main matrix, every (model, loss) a row; Table 1 (BAL grid)
    # holds the ablation's run with its delta vs DeepLabV3 + CE
    tables = {p.name for p in (res / "pac_bal" / "tables").glob("paper_*.csv")}
    assert tables == {"paper_pac_bal_t3.csv", "paper_pac_bal_t1.csv"}, tables
    t3 = pd.read_csv(res / "pac_bal" / "tables" / "paper_pac_bal_t3.csv")
    assert list(t3["method"]) == ["DeepLabV3", "ResNet + PAC", "DeepLabV3 + BAL", "ResNet + PAC + BAL"]
    assert list(t3["ours"]) == ["deeplabv3 / ce", "deeplabv3_pac / ce", "deeplabv3 / bal", "deeplabv3_pac / bal"]
    assert list(t3["paper_mIoU"]) == [76.68, 76.97, 77.64, 77.93]
    assert (t3["diff_mIoU"] - (t3["ours_mIoU_mean"] - t3["paper_mIoU"])).abs().max() < 1e-9
    base = t3.loc[0, "ours_mIoU_mean"]
    assert (t3["ours_delta"] - (t3["ours_mIoU_mean"] - base)).abs().max() < 1e-6
    t1 = pd.read_csv(res / "pac_bal" / "tables" / "paper_pac_bal_t1.csv")
    assert len(t1[t1["in_paper"]]) == 14  # every row of the paper's Table 1, in its order
    ran = t1[t1["ours"].notna()].set_index("row")
    assert list(ran.index) == ["lin-d4-s35-b0.5"]  # the ablation's one run (tiny_config.yaml)
    assert ran.loc["lin-d4-s35-b0.5", "paper_delta"] == 0.68
    # unet_segnet: the report's Figure 6 (augmentations) and Figure 8 (curves)
    for name in ("augmentations.png", "curves.png"):
        assert (res / "unet_segnet" / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the cross study: every method once, Pareto flags, two Pareto figures
    cross = pd.read_csv(res / "cross_study" / "tables" / "cross_study.csv")
    assert len(cross) == 6 and cross["pareto_macs"].any() and cross["pareto_fps"].any(), cross
    for name in ("pareto_macs.png", "pareto_fps.png"):
        assert (res / "cross_study" / "figures" / name).stat().st_size > 10_000


@pytest.mark.slow
def test_mlflow_tags_and_study_runs(workdir):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/results/mlflow.db")
    for study, n in (("pac_bal", 5), ("cross_study", 6), ("unet_segnet", 2)):
        exp = client.get_experiment_by_name(f"segbench-{study}")
        assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens it on its runs
        runs = client.search_runs([exp.experiment_id], "tags.`segbench.kind` = 'run'")
        assert len(runs) == n, study
        study_run = client.search_runs([exp.experiment_id], "tags.`segbench.kind` = 'study'")
        assert len(study_run) == 1
        for r in runs:
            tags = r.data.tags
            assert tags["study"] == study
            assert tags["segbench.run_key"] == f"{tags['dataset']}/{tags['model']}/{tags['loss']}/s{tags['seed']}"
            assert r.info.run_name == f"{tags['model']} · {tags['loss']} · s{tags['seed']}"  # one dataset
            assert tags["mlflow.parentRunId"] == study_run[0].info.run_id
            assert r.data.params["train.amp"] == "False"  # the CPU trained without AMP
            assert r.data.metrics["best_epoch"] in (1, 2)
            assert {"images/confusion_matrix.png", "images/samples.png"} <= {
                f.path for f in client.list_artifacts(r.info.run_id, "images")}
            (inp,) = r.inputs.dataset_inputs
            assert inp.dataset.name == "synthetic"
        files = {f.path for d in ("tables", "figures") for f in client.list_artifacts(study_run[0].info.run_id, d)}
        assert "tables/summary.csv" in files and "figures/curves.png" in files, files
        if study == "cross_study":
            assert "figures/pareto_macs.png" in files

    # Each training's model is logged once, in its home study (the first in the config citing
    # it); its other copies name the run holding it.
    order = [*yaml.safe_load((workdir / "config.yaml").read_text())["studies"], "cross_study"]
    home_of = {}
    for study in order:
        exp = client.get_experiment_by_name(f"segbench-{study}")
        for r in client.search_runs([exp.experiment_id], "tags.`segbench.kind` = 'run'"):
            home_of.setdefault(r.data.tags["segbench.run_key"], r.info.run_id)
    experiments = [e.experiment_id for e in client.search_experiments() if e.name.startswith("segbench-")]
    models = client.search_logged_models(experiment_ids=experiments)
    assert sorted(m.source_run_id for m in models) == sorted(home_of.values())
    for study in order:
        exp = client.get_experiment_by_name(f"segbench-{study}")
        for r in client.search_runs([exp.experiment_id], "tags.`segbench.kind` = 'run'"):
            home = home_of[r.data.tags["segbench.run_key"]]
            assert r.data.tags.get("segbench.model_run") == (None if r.info.run_id == home else home)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_snakemake_report_and_mlflow_compare_view_in_a_browser(workdir, tmp_path):
    """Screenshots (kept in $SEGBENCH_SCREENSHOTS if set) of the Snakemake report and of the
    MLflow UI as docs/mlflow.md walks through it: the experiment list; an experiment opening on
    its runs, nested under the study run, with readable names; the chart of val_mIoU across
    the study's runs; one run's description, dataset, logged model and images; the compare view."""
    from browser_support import CHROMIUM_ARGS, browser_path
    from mlflow.tracking import MlflowClient

    executable = browser_path()
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("SEGBENCH_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    report = tmp_path / "report.html"
    snakemake(workdir, "--report", str(report))
    assert report.stat().st_size > 100_000

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/results/mlflow.db")
    exp = client.get_experiment_by_name("segbench-pac_bal")
    runs = client.search_runs([exp.experiment_id], "tags.`segbench.kind` = 'run'")
    names = sorted(r.info.run_name for r in runs)
    assert names == sorted(f"{m} · {lo} · s0" for m, lo in (
        ("deeplabv3", "ce"), ("deeplabv3", "bal"), ("deeplabv3", "bal_linear"),
        ("deeplabv3_pac", "ce"), ("deeplabv3_pac", "bal")))
    one = next(r for r in runs if r.info.run_name == "deeplabv3 · ce · s0")
    (dataset,) = one.inputs.dataset_inputs
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    state = tmp_path / "mlflow-server"
    server = ["bash", str(ROOT / "scripts" / "mlflow_server.sh")]
    start = subprocess.run(server + ["start", "--port", str(port), "--state-dir", str(state),
                                     "--backend", f"sqlite:///{workdir}/results/mlflow.db",
                                     "--artifacts", str(workdir / "results" / "mlartifacts")],
                           capture_output=True, text=True, timeout=300, cwd=workdir)
    assert start.returncode == 0, start.stderr
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                # the Snakemake report: the studies are categories; the pac_bal study lists its tables
                page.goto(report.as_uri())
                page.wait_for_selector("text=Study pac_bal", timeout=60_000)
                page.screenshot(path=str(shots / "snakemake_report.png"))
                page.click("text=Study pac_bal")
                page.click("text=tables")
                row = page.locator("tr", has_text="paper_pac_bal_t3.html")
                row.locator("a[iconname=eye]").click()  # the table opens in the report's viewer
                frame = page.frame_locator("iframe").first
                frame.locator("text=ResNet + PAC + BAL").first.wait_for(timeout=30_000)
                page.screenshot(path=str(shots / "snakemake_report_pac_bal.png"))
                # ours (Δ, interval, verdict), then "Against the paper's figures"
                ours, published = frame.locator("table").all_inner_texts()
                assert "reversed" in ours or "holds" in ours or "not significant" in ours
                table = ours + published
                for run in ("deeplabv3 / ce", "deeplabv3_pac / ce", "deeplabv3 / bal", "deeplabv3_pac / bal"):
                    assert run in table
                assert "76.68" in table and "77.93" in table

                # MLflow, as docs/mlflow.md walks through it. 1: the experiment list, in the
                # "Model training" view (MLflow 3.17 opens on its GenAI view; the choice is kept)
                page.goto(f"{base}/#/experiments")
                page.wait_for_selector("text=segbench-pac_bal", timeout=60_000)
                page.get_by_text("Model training", exact=True).click()
                close_assistant(page)
                page.screenshot(path=str(shots / "mlflow_1_experiments.png"))
                # 2: the experiment opens on its runs: the study run, its runs nested under it
                page.click("text=segbench-pac_bal")
                page.wait_for_selector("text=study:pac_bal", timeout=60_000)
                close_assistant(page)
                assert page.get_by_role("heading", name="Runs").is_visible()
                assert page.locator(f"text={names[0]}").count() == 0  # nested: folded under the study run
                page.locator("[role=row]", has_text="study:pac_bal").locator(
                    "button[data-component-id$='runnamecellrenderer.tsx_46']").click()  # its expander
                for name in names:
                    page.wait_for_selector(f"text={name}", timeout=30_000)
                page.screenshot(path=str(shots / "mlflow_2_runs_of_a_study.png"))
                # 3: the chart view, val_mIoU of every run of the study
                page.locator("label:has(input[value=CHART])").click()
                page.get_by_placeholder("Search metric charts").fill("val_mIoU")
                title = page.get_by_text("val_mIoU", exact=True).first  # the chart's title
                title.wait_for(timeout=30_000)
                fullscreen = "button[@data-component-id='fullscreen_button_chartcard']"
                card = title.locator(f"xpath=ancestor::*[.//{fullscreen}][1]")  # the chart's card
                card.locator(f"xpath=.//{fullscreen}").click()
                for name in names:  # the legend: one line per run of the study
                    page.get_by_text(f"{name} (val_mIoU)").last.wait_for(timeout=30_000)
                page.wait_for_timeout(1000)  # the lines are drawn after the legend
                page.screenshot(path=str(shots / "mlflow_3_val_mIoU_across_runs.png"))
                page.keyboard.press("Escape")
                # 4: one run: description, parent, dataset, logged model, params, metrics
                page.goto(f"{base}/#/experiments/{exp.experiment_id}/runs/{one.info.run_id}")
                page.get_by_role("heading", name="deeplabv3 · ce · s0").wait_for(timeout=60_000)
                close_assistant(page)
                for text in ("Run synthetic/deeplabv3/ce/s0 of study pac_bal", "Parent run", "study:pac_bal",
                             f"synthetic ({dataset.dataset.digest})", "Logged models (1)", "best_val_mIoU",
                             "train.amp"):
                    page.get_by_text(text).first.wait_for(timeout=30_000)
                page.screenshot(path=str(shots / "mlflow_4_one_run.png"))
                page.get_by_text("Logged models (1)").first.scroll_into_view_if_needed()
                page.screenshot(path=str(shots / "mlflow_4_one_run_params_model.png"))
                # 5: its images among the artifacts
                page.get_by_role("tab", name="Artifacts").click()
                page.get_by_text("images", exact=True).click()
                for png in ("confusion_matrix.png", "samples.png"):
                    page.get_by_text(png, exact=True).click()
                    page.locator(f"img[alt='images/{png}']").wait_for(timeout=30_000)
                    page.screenshot(path=str(shots / f"mlflow_5_run_{png}"))

                # the compare view of the study's runs
                ids = json.dumps([r.info.run_id for r in runs])
                page.goto(f"{base}/#/compare-runs?runs={ids}&experiments={json.dumps([exp.experiment_id])}")
                for name in names:
                    page.wait_for_selector(f"text={name}", timeout=60_000)
                page.screenshot(path=str(shots / "mlflow_compare_pac_bal.png"), full_page=True)
            finally:
                browser.close()
    finally:
        subprocess.run(server + ["stop", "--state-dir", str(state)], capture_output=True, text=True, timeout=60)
    for name in ("snakemake_report.png", "snakemake_report_pac_bal.png", "mlflow_1_experiments.png",
                 "mlflow_2_runs_of_a_study.png", "mlflow_3_val_mIoU_across_runs.png", "mlflow_4_one_run.png",
                 "mlflow_4_one_run_params_model.png", "mlflow_5_run_confusion_matrix.png",
                 "mlflow_5_run_samples.png", "mlflow_compare_pac_bal.png"):
        assert (shots / name).stat().st_size > 20_000, name


def close_assistant(page) -> None:
    """Close MLflow's assistant panel (it takes a third of the window) when it opens; the UI
    remembers that it is closed."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    close = page.locator("[data-component-id='mlflow.assistant.chat_panel.close']").first
    try:
        close.wait_for(timeout=5_000)
    except PlaywrightTimeout:
        return  # not shown on this page
    close.click()
