"""Latency of one `segbench serve` request at 512x1024 on CPU, and where the time goes.

Starts the real server (`segbench serve RUN --port 0`) as a subprocess on 127.0.0.1 and
times, in this one run on this machine: the model's forward pass alone (in this process,
same threads), a JSON request (`POST /api/segment`), a PNG request (`POST /api/segment.png`)
and the page's request (`POST /api/segment?images=1`), each end to end from the client
(upload, decode, pad, forward, argmax, encode, download). Medians after one warm-up.

    PYTHONPATH=src python bench/bench_serve.py                        # a default-config U-Net (width 16)
    PYTHONPATH=src python bench/bench_serve.py results/runs/synthetic/unet/ce/s0 --threads 2

Without a RUN_DIR it builds an untrained default-config U-Net (width 16, 19 classes) in a
temporary run directory: the latency does not depend on the weights. Nothing here gates CI.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def make_run(folder: Path, width: int = 16, classes: int = 19) -> Path:
    from segbench.models import build_model

    names = [f"class {i}" for i in range(classes)]
    palette = np.random.default_rng(0).integers(0, 256, (classes, 3)).tolist()
    model = build_model("unet", classes, width=width)
    torch.save(model.state_dict(), folder / "model.pt")
    record = {"run_key": f"bench/unet-w{width}/untrained/s0", "dataset": "bench", "model": f"unet-w{width}",
              "loss": "untrained", "seed": 0, "epochs": 1, "num_classes": classes, "class_names": names, "palette": palette,
              "config": {"model": {"arch": "unet", "name": "unet", "params": {"width": width}}}}
    (folder / "run.json").write_text(json.dumps(record))
    return folder


def scene(h: int, w: int) -> np.ndarray:
    from segbench.data.synthetic import render

    return render(0, "val", 0, height=h, width=w)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?")
    ap.add_argument("--size", default="512x1024")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    h, w = (int(v) for v in a.size.split("x"))
    torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    run_dir = Path(a.run_dir) if a.run_dir else make_run(tmp)
    image = scene(h, w)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    upload = buf.getvalue()

    from segbench.serve.inference import Segmenter

    seg = Segmenter(run_dir)
    seg.predict(image)
    forward = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        seg.predict(image)
        forward.append(time.perf_counter() - t0)

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), TMPDIR=str(tmp))
    log = open(tmp / "server.out", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "segbench", "serve", str(run_dir), "--port", "0",
                             "--threads", str(a.threads)], stdout=log, stderr=subprocess.DEVNULL, env=env)
    try:
        url = None
        for _ in range(600):
            lines = [ln for ln in (tmp / "server.out").read_text().splitlines() if ln.startswith("serving ")]
            if lines:
                url = lines[0].rsplit(" on ", 1)[1]
                break
            if proc.poll() is not None:
                raise SystemExit("the server exited")
            time.sleep(0.1)
        times: dict[str, list[float]] = {}
        for name, path in (("JSON /api/segment", "/api/segment"), ("PNG /api/segment.png", "/api/segment.png"),
                           ("page /api/segment?images=1", "/api/segment?images=1")):
            server_side = []
            for i in range(a.repeats + 1):
                t0 = time.perf_counter()
                r = requests.post(url + path, files={"image": ("scene.png", upload, "image/png")}, timeout=300)
                dt = time.perf_counter() - t0
                r.raise_for_status()
                if i:
                    times.setdefault(name, []).append(dt)
                    server_side.append(float(r.headers.get("X-Segbench-Seconds") or r.json()["seconds"]))
            times[name + " (model, server side)"] = server_side
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {a.threads} threads, "
          f"run {seg.record['run_key']}, input {h}x{w} PNG of {len(upload) / 1e6:.2f} MB, median of {a.repeats}")
    base = statistics.median(forward)
    print(f"  {'forward + argmax in process':<48} {base * 1000:8.0f} ms   1.00x")
    for name, values in times.items():
        m = statistics.median(values)
        print(f"  {name:<48} {m * 1000:8.0f} ms   {m / base:.2f}x")


if __name__ == "__main__":
    main()
