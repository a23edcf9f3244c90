"""The web app of ``segbench serve``: one page and three endpoints, on Flask (already in the
environment through MLflow) and Werkzeug's threaded WSGI server.

=====================================  ==============================================================
``GET  /``                             the page: upload an image, see it, its mask overlaid, a legend
                                       with each class's colour and share of pixels
``GET  /api/info``                     the run served (key, model, classes, palette, val metrics)
                                       and the upload limits
``POST /api/segment``                  JSON: size, seconds, per-class pixels and shares, and the mask
                                       as a base64 palettised PNG of class ids (``mask_png``);
                                       ``?images=1`` adds the decoded input and the colour mask as
                                       base64 PNGs (what the page shows)
``POST /api/segment.png``              the mask as a palettised PNG (pixel value = class id, palette =
                                       class colours); ``?kind=overlay`` the input blended with it
=====================================  ==============================================================

An image is sent as the multipart field ``image`` (``curl -F image=@photo.jpg``) or as the
raw request body (``curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg'``).
Every refusal is JSON ``{"error": message}`` with a 4xx status (400 unreadable, 413 too
large: the file, the pixels, the padded pixels or the estimated memory, 415 not a supported
image); an allocation that fails all the same is a 503, an unexpected failure a 500, with the
same shape, and the server goes on serving. Requests are decoded, segmented and encoded one
at a time (a lock), so the memory of the requests in progress stays within one request's
budget (``Limits.max_memory_bytes``). Multipart uploads over 500 kB are spooled to a private
temporary directory (:func:`segbench.io.owned_tempdir`: removed when the server stops, or by
the next server when this one was killed); nothing else is written to disk.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
import tempfile
import threading
import traceback
import weakref
from importlib import resources
from pathlib import Path

from flask import Flask, Request, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from segbench.io import owned_tempdir
from segbench.serve.inference import (REQUEST_BYTES_PER_PIXEL, SAFETY, ImageRejected, Limits, OutOfMemory, Segmenter,
                                      color_mask, decode_image, format_bytes, is_out_of_memory, mask_png, overlay,
                                      png_bytes, release_free_memory)
from segbench.serve.best_run import best_run_of_study  # noqa: F401  (re-exported)

MULTIPART_OVERHEAD = 64 * 1024  # room for the form's boundaries and headers above the file itself
DRAIN_CAP = 256 * 1024 * 1024   # read (and discard) at most this much of a refused body so the client sees the 413


def _static(name: str) -> bytes:
    return resources.files("segbench.serve").joinpath("static", name).read_bytes()


STATIC_TYPES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}


def create_app(segmenter: Segmenter, limits: Limits | None = None, tmpdir: str | Path | None = None) -> Flask:
    """The Flask app serving ``segmenter``. Multipart uploads spool into ``tmpdir``, which the
    caller removes; when None, into a fresh :func:`segbench.io.owned_tempdir` removed with the app."""
    limits = limits or Limits()
    spool_dir = str(tmpdir or owned_tempdir("segbench-serve-"))

    class UploadRequest(Request):
        max_content_length = limits.max_upload_bytes + MULTIPART_OVERHEAD

        def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
            return tempfile.SpooledTemporaryFile(max_size=500 * 1024, mode="rb+", dir=spool_dir)

    app = Flask("segbench.serve", static_folder=None)
    app.request_class = UploadRequest
    app.config.update(SPOOL_DIR=spool_dir, LIMITS=limits)
    app.json.sort_keys = False  # keep run_key, width, height ... first, as built
    if tmpdir is None:  # ours: removed with the app, or at exit
        weakref.finalize(app, shutil.rmtree, spool_dir, True)
    static_files = {name: _static(name) for name in STATIC_TYPES}
    one_at_a_time = threading.Lock()  # decode + segment + encode: one request's memory at a time

    def error(message: str, status: int):
        return jsonify({"error": message, "status": status}), status

    def read_upload():
        """The uploaded file (a seekable stream) or raw body bytes; ImageRejected when absent or too big."""
        ctype = request.mimetype or ""
        if ctype == "multipart/form-data":
            upload = request.files.get("image")
            if upload is None:
                fields = ", ".join(sorted(set(request.files) | set(request.form))) or "none"
                raise ImageRejected(f"no file in the form field 'image' (fields sent: {fields}); send "
                                    "`curl -F image=@photo.jpg ...`", 400)
            stream = upload.stream
            stream.seek(0, 2)
            size = stream.tell()
            stream.seek(0)
        elif ctype == "application/x-www-form-urlencoded":
            raise ImageRejected("send the image as a multipart form field 'image' or as the raw request body, "
                                "not URL-encoded", 415)
        else:
            stream = request.get_data(cache=False)
            size = len(stream)
        if size > limits.max_upload_bytes:
            raise ImageRejected(_too_big_message(size), 413)
        return stream

    def _too_big_message(size: int | None) -> str:
        got = f"the upload ({size:,} bytes)" if size is not None else "the upload"
        return (f"{got} is larger than this server's limit of {limits.max_upload_bytes / 1e6:g} MB "
                f"({limits.max_upload_bytes:,} bytes; serve --max-upload-mb): send a smaller file")

    def admit(h: int, w: int) -> None:
        segmenter.admit(h, w, limits)

    def run_heavy(work):
        """``work(upload)`` (decode, segment, encode) under the lock; a failed allocation is a 503."""
        upload = read_upload()
        with one_at_a_time:
            try:
                return work(upload)
            except (MemoryError, RuntimeError) as e:
                if not is_out_of_memory(e):
                    raise
                traceback.print_exc(file=sys.stderr)
                raise OutOfMemory(f"the server ran out of memory on this image ({type(e).__name__}: "
                                  f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); it goes on "
                                  "serving: send a smaller image") from e
            finally:
                release_free_memory()  # the request's freed heap goes back to the system

    def decode_and_segment(upload):
        decoded = decode_image(upload, limits.max_pixels, admit)
        admit(*decoded.rgb.shape[:2])  # the decoded size (the header's, possibly rotated by EXIF)
        mask, seconds = segmenter.segment(decoded.rgb)
        return decoded, mask, seconds

    @app.get("/")
    def index():
        return Response(static_files["index.html"], content_type=STATIC_TYPES["index.html"])

    @app.get("/static/<name>")
    def static_file(name: str):
        if name not in static_files:
            return error(f"no static file {name!r}", 404)
        return Response(static_files[name], content_type=STATIC_TYPES[name],
                        headers={"Cache-Control": "no-cache"})

    @app.get("/api/info")
    def info():
        return jsonify({**segmenter.info(), "limits": limits.describe()})

    @app.post("/api/segment")
    def segment_json():
        return jsonify(run_heavy(segment_body))

    def segment_body(upload) -> dict:
        decoded, mask, seconds = decode_and_segment(upload)
        h, w = mask.shape
        body = {"run_key": segmenter.record.get("run_key"), "width": w, "height": h,
                "input_format": decoded.format, "input_mode": decoded.mode, "notes": decoded.notes,
                "seconds": seconds, "classes": segmenter.shares(mask),
                "mask_png": base64.b64encode(mask_png(mask, segmenter.palette)).decode("ascii")}
        if request.args.get("images") in ("1", "true", "yes"):
            body["input_png"] = base64.b64encode(png_bytes(decoded.rgb)).decode("ascii")
            body["color_png"] = base64.b64encode(png_bytes(color_mask(mask, segmenter.palette))).decode("ascii")
        return body

    @app.post("/api/segment.png")
    def segment_png():
        kind = request.args.get("kind", "mask")
        if kind not in ("mask", "overlay"):
            return error(f"kind={kind!r}: choose kind=mask (class ids, palettised) or kind=overlay", 400)

        def work(upload):
            decoded, mask, seconds = decode_and_segment(upload)
            data = mask_png(mask, segmenter.palette) if kind == "mask" else png_bytes(
                overlay(decoded.rgb, mask, segmenter.palette))
            return decoded, data, seconds

        decoded, data, seconds = run_heavy(work)
        headers = {"X-Segbench-Run": str(segmenter.record.get("run_key")), "X-Segbench-Seconds": f"{seconds:.4f}",
                   "X-Segbench-Notes": json.dumps(decoded.notes)}
        return Response(data, content_type="image/png", headers=headers)

    @app.errorhandler(ImageRejected)
    def rejected(e: ImageRejected):
        if isinstance(e, OutOfMemory):
            print(f"segbench serve: {e}", file=sys.stderr, flush=True)
        return error(str(e), e.status)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(e):
        _drain(request)
        return error(_too_big_message(request.content_length), 413)

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        return error(f"{e.name}: {e.description}", e.code or 500)

    @app.errorhandler(Exception)
    def unexpected(e: Exception):
        traceback.print_exc(file=sys.stderr)
        return error(f"the server failed on this image ({type(e).__name__}: {e}); it goes on serving", 500)

    return app


def _drain(req: Request) -> None:
    """Read and discard what is left of a refused body (at most DRAIN_CAP bytes), so the client,
    still sending, gets the 413 instead of a reset connection."""
    from werkzeug.wsgi import LimitedStream

    try:
        stream = req.stream  # bytes the form parser already read are accounted for
    except HTTPException:  # Content-Length over the limit: nothing was read yet
        stream = LimitedStream(req.environ["wsgi.input"], min(req.content_length or 0, DRAIN_CAP))
    drained = 0
    try:
        while drained < DRAIN_CAP:
            chunk = stream.read(1 << 20)
            if not chunk:
                break
            drained += len(chunk)
    except (OSError, HTTPException):
        pass


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None,
          threads: int | None = None) -> None:
    """Load the run, then serve until interrupted. Port 0 picks a free port; the first line
    printed is ``serving RUN_KEY on http://HOST:PORT``."""
    import signal

    import torch
    from werkzeug.serving import make_server

    def stop(signum, frame):
        raise KeyboardInterrupt  # leave serve_forever; the finally blocks remove the spool directory

    if threads:
        torch.set_num_threads(threads)
    segmenter = Segmenter(run_dir, "cpu")
    spool_dir = owned_tempdir("segbench-serve-")
    try:
        app = create_app(segmenter, limits, spool_dir)
        server = make_server(host, port, app, threaded=True)
        shown = f"[{host}]" if ":" in host else host
        print(f"serving {segmenter.record.get('run_key')} ({run_dir}) on http://{shown}:{server.server_port}",
              flush=True)
        print(f"  page: http://{shown}:{server.server_port}/   JSON: POST /api/segment   PNG: POST /api/segment.png"
              f"   limits: {app.config['LIMITS'].describe()}", flush=True)
        print(f"  memory: {segmenter.bytes_per_padded_pixel:.0f} bytes per padded pixel ({segmenter.calibration}); "
              f"a request's estimate = {SAFETY:g} x that x padded pixels + {REQUEST_BYTES_PER_PIXEL} x image pixels, "
              f"refused over {format_bytes(app.config['LIMITS'].max_memory_bytes)}", flush=True)
        signal.signal(signal.SIGTERM, stop)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    finally:
        shutil.rmtree(spool_dir, ignore_errors=True)
