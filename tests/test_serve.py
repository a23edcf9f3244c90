"""`segbench serve`: the endpoints and the page of a real server on 127.0.0.1, on a tiny
trained run; bad uploads; the study's best run; checkpoints loaded as weights only.

Masks are checked against the model run here directly (torch.load(weights_only=True),
build_model, argmax), with padding restated in numpy (edge replication, then crop), not
through the server's own code.
"""

import base64
import contextlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_run_spec
import requests
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MAX_UPLOAD_MB = 1.0
MAX_PIXELS = 200_000
SCREENSHOT = Path("/tmp/serve_page.png")


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_dataset):
    """A 2-epoch width-4 U-Net on 6 synthetic 64x128 scenes (seconds)."""
    from segbench.engine.train import train_run

    out = tmp_path_factory.mktemp("serve") / "run"
    train_run(tiny_run_spec(), tiny_dataset, out, threads=1, progress=False)
    shutil.rmtree(out / "ckpt", ignore_errors=True)
    return out


@pytest.fixture(scope="module")
def val_image(tiny_dataset):
    raw = tiny_dataset.parent / "raw" / "leftImg8bit" / "val"
    return np.asarray(Image.open(sorted(raw.rglob("*.png"))[0]).convert("RGB"))


@pytest.fixture(scope="module")
def reference(run_dir):
    """Predict independently of segbench.serve: the run's model, weights only, argmax."""
    from segbench.data.dataset import to_tensor
    from segbench.models import build_model

    record = json.loads((run_dir / "run.json").read_text())
    model = build_model(record["config"]["model"]["arch"], record["num_classes"], **record["config"]["model"]["params"])
    model.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
    model.eval()

    def predict(rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
        padded = np.pad(rgb, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
        with torch.inference_mode():
            return model(to_tensor(padded)[None]).argmax(1)[0, :h, :w].numpy().astype(np.uint8)

    predict.record = record
    return predict


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    """`segbench serve RUN --port 0` as a subprocess on 127.0.0.1, with TMPDIR in a folder we watch."""
    yield from _serving(run_dir, tmp_path_factory.mktemp("server"))


def _serving(run_dir, base, *options, tmp=None):
    tmp = tmp or base / "tmp"
    tmp.mkdir(exist_ok=True)
    base.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), TMPDIR=str(tmp), SEGBENCH_NO_PROGRESS="1")
    out, err = open(base / "stdout", "w+"), open(base / "stderr", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "segbench", "serve", str(run_dir), "--host", "127.0.0.1", "--port", "0",
         "--max-upload-mb", str(MAX_UPLOAD_MB), "--max-pixels", str(MAX_PIXELS), "--threads", "1", *options],
        stdout=out, stderr=err, env=env, cwd=base)
    url = None
    deadline = time.time() + 90
    while url is None and time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}: {(base / 'stderr').read_text()}")
        for line in (base / "stdout").read_text().splitlines():
            if line.startswith("serving ") and " on http://" in line:
                url = line.rsplit(" on ", 1)[1].strip()
        time.sleep(0.1)
    assert url, f"server did not start in 90 s: {(base / 'stderr').read_text()}"
    info = {"url": url, "proc": proc, "tmp": tmp, "cwd": base, "files_before": _listing(run_dir)}
    try:
        yield info
    finally:
        proc.send_signal(signal.SIGTERM)  # by PID; serve() removes its spool directory on SIGTERM
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()
        err.close()
    assert not list(tmp.iterdir()), f"the server left files in its TMPDIR: {list(tmp.rglob('*'))}"


def _listing(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def png(array: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kw)
    return buf.getvalue()


def png16_rgb(array: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = array.shape
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def post(server, data: bytes, path="/api/segment", name="image.png", **params):
    return requests.post(server["url"] + path, files={"image": (name, data)}, params=params, timeout=60)


def mask_of(response) -> np.ndarray:
    body = response.json() if callable(response.json) else response.json  # requests, or Flask's test client
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png"]))))


# ------------------------------------------------------------------ endpoints
def test_json_endpoint_matches_the_model(server, val_image, reference):
    r = post(server, png(val_image))
    assert r.status_code == 200, r.text
    body = r.json()
    h, w = val_image.shape[:2]
    assert (body["width"], body["height"]) == (w, h) and body["run_key"] == "tiny/unet/ce/s0"
    mask = mask_of(r)
    expected = reference(val_image)
    assert mask.shape == (h, w) and np.array_equal(mask, expected)
    classes = body["classes"]
    assert [c["name"] for c in classes] == reference.record["class_names"]
    assert [c["color"] for c in classes] == reference.record["palette"]
    counts = np.bincount(expected.ravel(), minlength=len(classes))
    assert [c["pixels"] for c in classes] == counts.tolist()
    assert sum(c["share"] for c in classes) == pytest.approx(1.0)
    assert "input_png" not in body
    with_images = post(server, png(val_image), images=1).json()
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(with_images["input_png"]))))
    colour = np.asarray(Image.open(io.BytesIO(base64.b64decode(with_images["color_png"]))))
    assert np.array_equal(shown, val_image)
    assert np.array_equal(colour, np.asarray(reference.record["palette"], np.uint8)[expected])


def test_png_endpoint_is_a_palettised_mask(server, val_image, reference):
    r = requests.post(server["url"] + "/api/segment.png", data=png(val_image),
                      headers={"Content-Type": "image/png"}, timeout=60)  # the raw body works too
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"
    im = Image.open(io.BytesIO(r.content))
    assert im.mode == "P"
    assert np.array_equal(np.asarray(im), reference(val_image))
    palette = np.asarray(im.getpalette()[: 3 * 19]).reshape(-1, 3).tolist()
    assert palette == reference.record["palette"]
    over = post(server, png(val_image), path="/api/segment.png", kind="overlay")
    assert over.status_code == 200 and Image.open(io.BytesIO(over.content)).size == (128, 64)
    bad = post(server, png(val_image), path="/api/segment.png", kind="heatmap")
    assert bad.status_code == 400 and "kind=mask" in bad.json()["error"]


@pytest.mark.parametrize("size", [(45, 77), (1, 1), (64, 100), (33, 129)])
def test_sides_not_multiples_of_32(server, val_image, reference, size):
    h, w = size
    image = np.ascontiguousarray(np.resize(val_image, (h, w, 3)) if h > 64 or w > 128 else val_image[:h, :w])
    r = post(server, png(image))
    assert r.status_code == 200, r.text
    assert np.array_equal(mask_of(r), reference(image))


# ------------------------------------------------------------------ modes that are handled
def test_rgba_is_composited_over_white(server, val_image):
    rgba = np.dstack([val_image, np.full(val_image.shape[:2], 255, np.uint8)])
    rgba[:, :40, 3] = 0  # a transparent band: white after compositing
    expected_rgb = val_image.copy()
    expected_rgb[:, :40] = 255
    r = post(server, png(rgba))
    assert r.status_code == 200 and any("alpha" in n for n in r.json()["notes"])
    assert np.array_equal(mask_of(r), mask_of(post(server, png(expected_rgb))))


def test_greyscale_8_and_16_bit(server, val_image):
    grey = np.asarray(Image.fromarray(val_image).convert("L"))
    as_rgb = mask_of(post(server, png(np.dstack([grey] * 3))))
    r8 = post(server, png(grey))
    assert r8.status_code == 200 and any("greyscale" in n for n in r8.json()["notes"])
    assert np.array_equal(mask_of(r8), as_rgb)
    r16 = post(server, png(grey.astype(np.uint16) * 257))  # 16-bit PNG, same image exactly
    assert r16.status_code == 200 and any("16-bit" in n for n in r16.json()["notes"])
    assert r16.json()["input_mode"].startswith("I")
    assert np.array_equal(mask_of(r16), as_rgb)


def test_16_bit_rgb_png(server, val_image):
    r = post(server, png16_rgb(val_image.astype(np.uint16) * 257))
    assert r.status_code == 200 and any("16-bit PNG" in n for n in r.json()["notes"])
    assert np.array_equal(mask_of(r), mask_of(post(server, png(val_image))))


# ------------------------------------------------------------------ refusals
def _float_tiff() -> bytes:
    return png(np.random.default_rng(0).random((16, 16), dtype=np.float32), "TIFF")


@pytest.mark.parametrize("case, data, status, words", [
    ("text", b"this is not an image\n" * 10, 415, "not an image"),
    ("empty", b"", 400, "empty"),
    ("truncated png", None, 400, "truncated or damaged"),
    ("float tiff", None, 415, "floating-point"),
    ("too many pixels", None, 413, "--max-pixels"),
    ("file too large", None, 413, "--max-upload-mb"),
])
def test_bad_uploads_are_refused_clearly(server, val_image, case, data, status, words):
    if case == "truncated png":
        data = png(np.random.default_rng(1).integers(0, 255, (64, 128, 3), dtype=np.uint8))[:2000]
    elif case == "float tiff":
        data = _float_tiff()
    elif case == "too many pixels":
        data = png(np.zeros((400, 600), np.uint8))  # 240,000 > 200,000 pixels in a file of a few kB
    elif case == "file too large":
        data = os.urandom(int(MAX_UPLOAD_MB * 1e6) + 10_000)
    r = post(server, data, name=f"{case}.bin")
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert requests.get(server["url"] + "/api/info", timeout=10).status_code == 200  # still serving


def test_raw_body_too_large_and_missing_field(server):
    r = requests.post(server["url"] + "/api/segment", data=b"\0" * int(MAX_UPLOAD_MB * 1e6 + 200_000),
                      headers={"Content-Type": "application/octet-stream"}, timeout=60)
    assert r.status_code == 413 and "limit of 1 MB" in r.json()["error"]
    r = requests.post(server["url"] + "/api/segment", files={"photo": ("a.png", b"x")}, timeout=60)
    assert r.status_code == 400 and "'image'" in r.json()["error"] and "photo" in r.json()["error"]


def test_uploads_leave_no_files(server, run_dir, val_image):
    big = np.random.default_rng(2).integers(0, 255, (400, 480, 3), dtype=np.uint8)  # ~580 kB: spooled to disk
    assert 500_000 < len(png(big)) < MAX_UPLOAD_MB * 1e6
    r = post(server, png(big))
    assert r.status_code == 200, r.text
    spool = [p for p in server["tmp"].iterdir()]
    assert len(spool) == 1 and spool[0].name.startswith("segbench-serve-")
    assert not list(spool[0].iterdir()), "an upload stayed in the spool directory"
    assert _listing(run_dir) == server["files_before"], "the server wrote into the run directory"
    assert sorted(p.name for p in server["cwd"].iterdir()) == ["stderr", "stdout", "tmp"]


# ------------------------------------------------------------------ the page, in headless Chromium
from browser_support import CHROMIUM_ARGS, browser_path as _browser  # noqa: E402


def test_page_in_headless_chromium(server, val_image, reference, tmp_path):
    executable = _browser()
    from playwright.sync_api import sync_playwright

    image_path, text_path = tmp_path / "scene.png", tmp_path / "notes.txt"
    image_path.write_bytes(png(val_image))
    text_path.write_text("not an image")
    present = [reference.record["class_names"][i] for i in np.unique(reference(val_image))]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            page.goto(server["url"] + "/")
            page.wait_for_function("document.getElementById('run-info').textContent.includes('tiny/unet/ce/s0')")
            page.set_input_files("#file", str(image_path))
            page.wait_for_selector("#legend .legend-entry", timeout=30_000)
            sizes = page.evaluate("""() => ['input-img', 'overlay-base', 'mask-img'].map(id => {
                const im = document.getElementById(id); return [im.complete, im.naturalWidth, im.naturalHeight]; })""")
            assert sizes == [[True, 128, 64]] * 3
            names = page.locator("#legend .legend-entry .name").all_inner_texts()
            assert sorted(names) == sorted(present)
            assert page.locator("#error").is_hidden()
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            page.set_input_files("#file", str(text_path))  # a bad upload shows the server's message
            page.wait_for_selector("#error:not([hidden])", timeout=30_000)
            assert "not an image" in page.inner_text("#error")
        finally:
            browser.close()


# ------------------------------------------------------------------ the run served
def _fake_study(tmp_path) -> Path:
    """A study of four runs: val mIoU 0.31, 0.52, NaN and none; summary.csv's own mIoU says 0.99."""
    results = tmp_path / "results"
    table = results / "studies" / "s" / "tables"
    table.mkdir(parents=True)
    rows = [("d/a/ce/s0", 0.31), ("d/b/ce/s0", 0.52), ("d/c/ce/s0", float("nan")), ("d/e/ce/s0", None)]
    (table / "summary.csv").write_text("dataset,model,mIoU,run_key\n" + "".join(
        f"d,{k.split('/')[1]},0.99,{k}\n" for k, _ in rows))
    for key, miou in rows:
        run = results / "runs" / key
        run.mkdir(parents=True)
        (run / "model.pt").write_bytes(b"")
        dataset, model, loss, seed = key.split("/")
        (run / "run.json").write_text(json.dumps({
            "run_key": key, "dataset": dataset, "model": model, "loss": loss, "seed": int(seed[1:]),
            "config": {}, "num_classes": 2, "class_names": ["x", "y"], "epochs": 1}))
        if miou is not None:  # metrics.json in the layout of docs/outputs.md
            (run / "metrics.json").write_text(json.dumps({
                "run_key": key, "mIoU": miou, "aAcc": 0.9, "mAcc": 0.8, "mDice": 0.7, "IoU": [miou, miou],
                "class_names": ["x", "y"], "num_images": 2, "input_size": [8, 8]}))
    return results


def test_study_serves_its_best_run_by_val_miou(tmp_path):
    from segbench.serve.app import best_run_of_study

    results = _fake_study(tmp_path)
    best, candidates = best_run_of_study("s", results)
    assert best == results / "runs" / "d/b/ce/s0"
    assert [c["mIoU"] for c in candidates] == [0.31, 0.52, None, None]
    with pytest.raises(FileNotFoundError, match="studies with results: s"):
        best_run_of_study("nope", results)


def _segbench(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, "-m", "segbench", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def test_cli_refuses_bad_choices(tmp_path):
    proc = _segbench("serve")
    assert proc.returncode == 2 and "RUN_DIR or --study" in proc.stderr
    proc = _segbench("serve", "--study", "missing", "--results", str(tmp_path))
    assert proc.returncode == 2 and "summary.csv does not exist" in proc.stderr
    proc = _segbench("serve", str(tmp_path / "no-run"), "--port", "0")
    assert proc.returncode == 2 and "run.json is missing" in proc.stderr
    results = _fake_study(tmp_path)
    (results / "runs" / "d/b/ce/s0" / "run.json").unlink()  # its best run has metrics but no run.json
    proc = _segbench("serve", "--study", "s", "--results", str(results), "--port", "0")
    assert proc.returncode == 2 and f"{results}/runs/d/b/ce/s0/run.json is missing" in proc.stderr
    assert "train step" in proc.stderr


def test_checkpoint_is_loaded_as_weights_only(run_dir, tmp_path):
    """A model.pt that pickles code is refused, and the code never runs."""
    from segbench.serve.inference import Segmenter

    evil = tmp_path / "run"
    shutil.copytree(run_dir, evil)
    marker = tmp_path / "pwned"
    state = torch.load(run_dir / "model.pt", weights_only=True)
    state["_extra"] = _Payload(str(marker))
    torch.save(state, evil / "model.pt")
    with pytest.raises(Exception, match="(?i)weights.only|unpickl"):
        Segmenter(evil)
    assert not marker.exists()
    torch.load(evil / "model.pt", weights_only=False)  # the payload is live: a full unpickle runs it
    assert marker.exists()


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


# ------------------------------------------------------------------ the cost of a request (issue 18)
def _padded(side: int) -> int:
    return -(-side // 32) * 32


def test_narrow_image_is_refused_by_the_padded_size(server):
    """A 1-pixel-high strip passes --max-pixels as uploaded but the model would run on it 32
    times larger: refused from the header, before decoding, and the server goes on."""
    w = 150_000  # 150,000 pixels <= 200,000; padded: 32 x 150,016 = 4,800,512
    r = post(server, png(np.zeros((1, w), np.uint8)))
    assert r.status_code == 413, r.text
    message = r.json()["error"]
    padded = 32 * _padded(w)
    for words in (f"{w}x1 ({w:,} pixels)", f"padded to {_padded(w)}x32 ({padded:,} pixels",
                  f"limit of {MAX_PIXELS:,} pixels", "--max-pixels", "crop or downscale"):
        assert words in message, message
    # the boundary, on the padded size: 32 x 6,240 = 199,680 is served, 32 x 6,272 = 200,704 is not
    ok = post(server, png(np.full((1, 6240), 120, np.uint8)))
    assert ok.status_code == 200 and (ok.json()["width"], ok.json()["height"]) == (6240, 1)
    assert mask_of(ok).shape == (1, 6240)
    over = post(server, png(np.full((1, 6241), 120, np.uint8)))
    assert over.status_code == 413 and "200,704 pixels" in over.json()["error"]


def test_a_killed_servers_spool_folder_is_removed_by_the_next_server(run_dir, tmp_path):
    """SIGKILL leaves the server no time to remove its spool folder; the next `segbench serve`
    with the same TMPDIR removes it (its owner's pid no longer runs) and says so."""
    tmp = tmp_path / "tmp"
    first = _serving(run_dir, tmp_path / "first", tmp=tmp)
    srv = next(first)
    srv["proc"].kill()
    srv["proc"].wait()
    left = list(tmp.iterdir())
    assert [p.name.startswith(f"segbench-serve-{srv['proc'].pid}-") for p in left] == [True], left
    second = _serving(run_dir, tmp_path / "second", tmp=tmp)
    next(second)
    assert not left[0].exists()
    assert f"removed {left[0]}, left by process {srv['proc'].pid} which is gone" in \
        (tmp_path / "second" / "stderr").read_text()
    for server in (second, first):  # resumed: SIGTERM by pid, then asserts that TMPDIR is empty
        with pytest.raises(StopIteration):
            next(server)


def test_cli_max_memory_refuses_with_the_sizes(run_dir, tmp_path, val_image):
    """`segbench serve --max-memory 2M`: a 16x16 image is served, the 64x128 image (estimated
    a few MB for the width-4 U-Net) is refused with its sizes, the estimate and the limit."""
    with contextlib.contextmanager(_serving)(run_dir, tmp_path, "--max-memory", "2M") as srv:
        info = requests.get(srv["url"] + "/api/info", timeout=10).json()
        assert info["limits"]["max_memory_bytes"] == 2 * 2**20
        assert info["limits"]["max_memory_source"] == "serve --max-memory"
        assert "measured at 256x256" in info["memory_estimate"]["calibration"]
        small = post(srv, png(val_image[:16, :16]))
        assert small.status_code == 200, small.text
        r = post(srv, png(val_image))
        assert r.status_code == 413, r.text
        message = r.json()["error"]
        for words in ("128x64 (8,192 pixels)", "padded to 128x64", "needs an estimated", "MiB of memory",
                      "limit of 2.00 MiB per request (serve --max-memory)",
                      "or start the server with a larger --max-memory"):
            assert words in message, message
        assert requests.get(srv["url"] + "/api/info", timeout=10).status_code == 200
    proc = _segbench("serve", str(run_dir), "--port", "0", "--max-memory", "lots")
    assert proc.returncode == 2 and "--max-memory 'lots': give a positive size with a unit" in proc.stderr


@pytest.fixture(scope="module")
def segmenter(run_dir):
    from segbench.serve.inference import Segmenter

    return Segmenter(run_dir)


class _CountingModel(torch.nn.Module):
    """The run's model, counting its calls; the first ``fail`` calls ask torch for 4 EiB first."""

    def __init__(self, model, fail=0):
        super().__init__()
        self.model, self.calls, self.fail = model, 0, fail

    def forward(self, x):
        self.calls += 1
        if self.calls <= self.fail:
            torch.empty(2**62, dtype=torch.uint8)  # a real allocation failure of torch's CPU allocator
        return self.model(x)


def _client(segmenter, monkeypatch, limits=None, fail=0):
    from segbench.serve.app import create_app

    counting = _CountingModel(segmenter.model, fail)
    monkeypatch.setattr(segmenter, "model", counting)
    return create_app(segmenter, limits).test_client(), counting


def _post_client(client, data: bytes, path="/api/segment"):
    return client.post(path, data={"image": (io.BytesIO(data), "image.png")}, content_type="multipart/form-data")


def test_issue_18_strip_of_8_million_pixels_is_refused_before_decoding(segmenter, monkeypatch):
    """The issue's upload: a 1 x 8,000,000 greyscale PNG of a few kB, under the default
    --max-pixels as uploaded, 256,000,000 pixels padded: 413 from the header, nothing run."""
    import segbench.serve.inference as inference
    from segbench.serve.inference import DEFAULT_MAX_PIXELS

    data = png(np.zeros((1, 8_000_000), np.uint8))
    assert len(data) < 20_000 and 8_000_000 <= DEFAULT_MAX_PIXELS
    decoded, to_rgb = [], inference._to_rgb
    monkeypatch.setattr(inference, "_to_rgb", lambda im, *a: decoded.append(im.size) or to_rgb(im, *a))
    client, model = _client(segmenter, monkeypatch)
    r = _post_client(client, data)
    assert r.status_code == 413 and model.calls == 0 and decoded == []
    assert r.json["error"].startswith("the image is 8000000x1 (8,000,000 pixels); the model runs on it padded to "
                                      "8000000x32 (256,000,000 pixels")
    assert f"limit of {DEFAULT_MAX_PIXELS:,} pixels (serve --max-pixels)" in r.json["error"]
    assert _post_client(client, png(np.zeros((1, 100), np.uint8))).status_code == 200  # still serving
    assert decoded == [(100, 1)] and model.calls == 1


def test_memory_budget_is_checked_before_running(segmenter, monkeypatch, val_image, reference):
    from segbench.serve.inference import Limits

    h, w = val_image.shape[:2]
    limit = segmenter.estimate_bytes(h, w) - 1  # the 64x128 image is just over, 64x64 well under
    client, model = _client(segmenter, monkeypatch, Limits(max_memory_bytes=limit))
    r = _post_client(client, png(val_image))
    assert r.status_code == 413 and model.calls == 0, r.get_data(as_text=True)
    assert "needs an estimated" in r.json["error"] and "--max-memory" in r.json["error"]
    r = _post_client(client, png(np.ascontiguousarray(val_image[:, :64])))
    assert r.status_code == 200 and model.calls == 1
    assert np.array_equal(mask_of(r), reference(np.ascontiguousarray(val_image[:, :64])))
    info = client.get("/api/info").json
    assert info["limits"]["max_memory_bytes"] == limit


def _status_kib(key):
    return int(next(line for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith(key)).split()[1])


def test_estimate_covers_the_measured_peak(segmenter, monkeypatch, val_image):
    """The estimate of a 250x600 request (the server pads it to 256x608) is at least the peak
    RSS this process rises by while the test client serves it, measured here from
    /proc/self/status (VmHWM reset through /proc/self/clear_refs)."""
    import ctypes

    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("/proc/self/clear_refs cannot be written here: the peak RSS cannot be reset")
    client, _ = _client(segmenter, monkeypatch)
    image = np.ascontiguousarray(np.resize(val_image, (250, 600, 3)))
    data = png(image)
    assert _post_client(client, data, "/api/segment.png?kind=overlay").status_code == 200  # warm-up
    ctypes.CDLL(None).malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS:")
    r = _post_client(client, data, "/api/segment?images=1")
    rise = (_status_kib("VmHWM:") - before) * 1024
    assert r.status_code == 200
    estimate = segmenter.estimate_bytes(250, 600)
    assert 0 < rise <= estimate, f"measured {rise:,} bytes, estimated {estimate:,}"


def test_out_of_memory_is_a_503_and_the_next_request_succeeds(segmenter, monkeypatch, val_image, reference):
    client, model = _client(segmenter, monkeypatch, fail=1)
    r = _post_client(client, png(val_image))
    assert r.status_code == 503, r.get_data(as_text=True)
    message = r.json["error"]
    assert "ran out of memory" in message and "can't allocate memory" in message and "128x64" in message
    assert "goes on serving" in message
    r = _post_client(client, png(val_image))
    assert r.status_code == 200 and model.calls == 2
    assert np.array_equal(mask_of(r), reference(val_image))


def test_requests_are_processed_one_at_a_time(segmenter, monkeypatch, val_image):
    """Two uploads sent together: the second is decoded only after the first is encoded."""
    import threading

    import segbench.serve.app as app_module

    events, lock = [], threading.Lock()

    def traced(name, function):
        def call(*args, **kwargs):
            with lock:
                events.append(("start", name))
            try:
                return function(*args, **kwargs)
            finally:
                with lock:
                    events.append(("end", name))
        return call

    monkeypatch.setattr(app_module, "decode_image", traced("decode", app_module.decode_image))
    monkeypatch.setattr(app_module, "mask_png", traced("encode", app_module.mask_png))
    client, _ = _client(segmenter, monkeypatch)
    data = png(np.ascontiguousarray(np.resize(val_image, (256, 512, 3))))
    results = []
    threads = [threading.Thread(target=lambda: results.append(_post_client(client, data).status_code))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200, 200]
    assert events == [("start", "decode"), ("end", "decode"), ("start", "encode"), ("end", "encode")] * 2
