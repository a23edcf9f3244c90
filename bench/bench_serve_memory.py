"""Peak memory of one `segbench serve` request, worst cases just under the limits, per model.

For each model (default: unet, segnet, deeplabv3, gradnet and the three van_fpn_* of
config.yaml, untrained, 19 classes: memory does not depend on the weights) it starts the real
server (`segbench serve RUN --port 0 --max-memory M --max-pixels P`) as a child process,
reads the server's memory figures from /api/info, builds the images that come closest to the
limits by the server's own published formula, and sends each one. Around each request it
resets the child's peak RSS (writing 5 to /proc/PID/clear_refs) and reads /proc/PID/status:
``rise`` = VmHWM after - VmRSS before, the memory the request added; ``HWM`` the process's
absolute peak. Cases:

  square          the largest n x n image (n = k*multiple + 1: the most padding) under the budget
  strip 1xN       a 1-pixel-high greyscale strip padded to 32 (or the multiple) high: at most
                  --max-pixels padded pixels
  strip 33xN      33 high, padded to 64: twice the pixels the image has
  16-bit grey     the square as a 16-bit greyscale PNG (decoded through int64 / float64)
  palette+alpha   the square as a palette PNG with transparency (composited over white: float32)
  RGBA page       the square as RGBA, POST /api/segment?images=1 (the page's request: input,
                  colour mask and mask PNGs in the JSON)
  overlay         the square, POST /api/segment.png?kind=overlay
  2 at once       two squares sent together (the server runs them one at a time)
  just over       the square one step larger: must be refused (413) without running

and prints, per case, the image, padded size, the server's estimate, the measured rise and
whether rise <= estimate <= budget. Linux only (/proc). It takes a few minutes at the
default 2 GiB budget on 2 cores.

    PYTHONPATH=src python bench/bench_serve_memory.py                       # 2G budget, every model
    PYTHONPATH=src python bench/bench_serve_memory.py --max-memory 1G unet deeplabv3
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["unet", "segnet", "deeplabv3", "gradnet", "van_fpn_frm", "van_fpn_ppm", "van_fpn_dappm"]


def make_run(folder: Path, name: str, spec: dict, classes: int = 19) -> Path:
    from segbench.models import build_model

    folder.mkdir(parents=True)
    model = build_model(spec["arch"], classes, **spec.get("params", {}))
    torch.save(model.state_dict(), folder / "model.pt")
    palette = np.random.default_rng(0).integers(0, 256, (classes, 3)).tolist()
    record = {"run_key": f"bench/{name}/untrained/s0", "dataset": "bench", "model": name, "loss": "untrained",
              "seed": 0, "epochs": 1,
              "num_classes": classes, "class_names": [f"class {i}" for i in range(classes)], "palette": palette,
              "config": {"model": {"arch": spec["arch"], "name": name, "params": spec.get("params", {})}}}
    (folder / "run.json").write_text(json.dumps(record))
    return folder


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class Server:
    def __init__(self, run_dir: Path, tmp: Path, max_memory: str, max_pixels: int, threads: int):
        self.log = tmp / "server.out"
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), TMPDIR=str(tmp))
        self.out = open(self.log, "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "segbench", "serve", str(run_dir), "--port", "0", "--threads", str(threads),
             "--max-memory", max_memory, "--max-pixels", str(max_pixels), "--max-upload-mb", "200"],
            stdout=self.out, stderr=subprocess.STDOUT, env=env)
        for _ in range(1200):
            lines = [ln for ln in self.log.read_text().splitlines() if ln.startswith("serving ")]
            if lines:
                self.url = lines[0].rsplit(" on ", 1)[1]
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited: {self.log.read_text()}")
            time.sleep(0.1)
        raise SystemExit("the server did not start in 120 s")

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.out.close()

    def measure(self, send) -> tuple[list, int, int]:
        """(responses, rise in bytes, absolute peak in bytes) of ``send()``."""
        pid = self.proc.pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        before = status_kib(pid, "VmRSS")
        responses = send()
        return responses, (status_kib(pid, "VmHWM") - before) * 1024, status_kib(pid, "VmHWM") * 1024


def encode(array: np.ndarray, mode: str | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(array) if mode is None else Image.fromarray(array, mode)
    im.save(buf, "PNG", compress_level=1, **kw)
    return buf.getvalue()


def picture(h: int, w: int) -> np.ndarray:
    """A smooth RGB picture (small PNGs; the content does not change the memory)."""
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    return np.stack([np.broadcast_to(y, (h, w)), np.broadcast_to(x, (h, w)), np.full((h, w), 90, np.float32)],
                    axis=2).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=MODELS, help="config.yaml model names")
    ap.add_argument("--max-memory", default="2G")
    ap.add_argument("--max-pixels", type=int, default=4096 * 2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--config", default=str(ROOT / "config.yaml"))
    a = ap.parse_args()
    from segbench.serve.inference import padded_size, parse_memory

    budget = parse_memory(a.max_memory)
    specs = yaml.safe_load(Path(a.config).read_text())["models"]
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-memory-"))
    print(f"{platform.machine()}, torch {torch.__version__}, {a.threads} threads; --max-memory {a.max_memory} "
          f"({budget:,} bytes), --max-pixels {a.max_pixels:,}")
    print(f"{'model':<14} {'case':<13} {'image':>13} {'padded':>13} {'status':>6} {'estimate':>9} {'rise':>9} "
          f"{'HWM':>9} {'rise/est':>8}  ok")
    worst = None
    failures = []
    for name in a.models:
        run_dir = make_run(tmp / name, name, specs[name])
        server_tmp = tmp / f"{name}-tmp"
        server_tmp.mkdir()
        server = Server(run_dir, server_tmp, a.max_memory, a.max_pixels, a.threads)
        try:
            info = requests.get(server.url + "/api/info", timeout=30).json()
            est, m = info["memory_estimate"], info["pad_multiple"]
            bpp, safety, req = est["bytes_per_padded_pixel"], est["safety_factor"], est["request_bytes_per_pixel"]
            idle = status_kib(server.proc.pid, "VmRSS") * 1024
            print(f"{name:<14} calibrated {bpp:.0f} bytes per padded pixel ({est['calibration']}), pad multiple {m}, "
                  f"idle RSS {idle / 2**20:.0f} MiB", flush=True)

            def estimate(h, w):
                ph, pw = padded_size(h, w, m)
                return safety * bpp * ph * pw + req * h * w

            def fits(h, w):
                ph, pw = padded_size(h, w, m)
                return ph * pw <= a.max_pixels and estimate(h, w) <= budget

            k = 1
            while fits((k + 1) * m + 1, (k + 1) * m + 1):
                k += 1
            n = k * m + 1  # the largest k*m+1 square that fits
            while fits(n + m, n + m):
                n += m
            n_strip = m * (a.max_pixels // (m * m))  # 1 x N, padded to m x N
            while not fits(1, n_strip):
                n_strip -= m
            n33 = m * (a.max_pixels // (2 * m * m))
            while not fits(33, n33):
                n33 -= m
            sq = picture(n, n)
            alpha = np.dstack([sq, np.full((n, n), 200, np.uint8)])
            pal = Image.fromarray(sq).quantize(64)
            pal.info["transparency"] = 0
            buf = io.BytesIO()
            pal.save(buf, "PNG", transparency=0, compress_level=1)
            grey16 = (picture(n, n)[..., 0].astype(np.uint16) * 257)
            cases = [
                ("square", (n, n), encode(sq), "/api/segment"),
                ("strip 1xN", (1, n_strip), encode(np.full((1, n_strip), 100, np.uint8)), "/api/segment"),
                ("strip 33xN", (33, n33), encode(picture(33, n33)), "/api/segment"),
                ("16-bit grey", (n, n), encode(grey16), "/api/segment"),
                ("palette+alpha", (n, n), buf.getvalue(), "/api/segment"),
                ("RGBA page", (n, n), encode(alpha), "/api/segment?images=1"),
                ("overlay", (n, n), encode(sq), "/api/segment.png?kind=overlay"),
                ("2 at once", (n, n), encode(sq), "2"),
                ("just over", (n + m, n + m), encode(picture(n + m, n + m)), "/api/segment"),
            ]
            for case, (h, w), data, path in cases:
                def send_one(p=path, d=data):
                    return requests.post(server.url + p, files={"image": ("x.png", d, "image/png")}, timeout=900)

                if path == "2":
                    def send(d=data):
                        out = []
                        ts = [threading.Thread(target=lambda: out.append(send_one("/api/segment", d)))
                              for _ in range(2)]
                        for t in ts:
                            t.start()
                        for t in ts:
                            t.join()
                        return out
                else:
                    def send(f=send_one):
                        return [f()]
                responses, rise, hwm = server.measure(send)
                codes = sorted({r.status_code for r in responses})
                e = estimate(h, w)
                ph, pw = padded_size(h, w, m)
                expect = [413] if case == "just over" else [200]
                ok = codes == expect and rise <= budget and (case == "just over" or rise <= e)
                if not ok:
                    failures.append((name, case, codes, responses[0].text[:300]))
                print(f"{name:<14} {case:<13} {f'{w}x{h}':>13} {f'{pw}x{ph}':>13} {'/'.join(map(str, codes)):>6} "
                      f"{e / 2**20:7.0f}Mi {rise / 2**20:7.0f}Mi {hwm / 2**20:7.0f}Mi {rise / e:8.2f}  "
                      f"{'yes' if ok else 'NO'}", flush=True)
                if case != "just over" and (worst is None or rise > worst[0]):
                    worst = (rise, hwm, name, case, f"{w}x{h}", f"{pw}x{ph}", e, idle)
        finally:
            server.close()
    if worst:
        rise, hwm, name, case, image, padded, e, idle = worst
        print(f"worst case: {name} {case} {image} (padded {padded}): the request added {rise / 2**20:.0f} MiB "
              f"(estimate {e / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB); the server's peak RSS "
              f"{hwm / 2**20:.0f} MiB (idle {idle / 2**20:.0f} MiB)")
    for f in failures:
        print("FAILED:", *f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
