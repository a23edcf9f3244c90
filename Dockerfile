# syntax=docker/dockerfile:1
# An image that serves one trained run with `segbench serve`: the page, POST /api/segment (JSON)
# and POST /api/segment.png. UNTESTED: no Docker engine runs on the machines this project is
# developed and tested on. What was checked without one: the same packages, installed into a
# fresh venv with `pip install --no-deps .`, serve a run (docs/serve.md, "Docker").
#
#   docker build --build-arg RUN_DIR=results/runs/synthetic/unet_xception/ce/s0 -t segbench-serve .
#   docker run --rm -p 8000:8000 segbench-serve                 # then open http://127.0.0.1:8000
#   docker run --rm -p 8000:8000 -v "$PWD/results/runs/synthetic/segnet/ce/s0:/srv/run:ro" segbench-serve
#                                                               # another run, mounted over the baked-in one
# The run directory needs run.json and model.pt (metrics.json is shown when present); .dockerignore
# sends only those files of results/ to the build.
FROM python:3.11-slim

ARG RUN_DIR=results/runs/synthetic/unet_xception/ce/s0
# PyTorch's CPU-only wheels (the default index's Linux wheel is a CUDA build of several GB)
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SEGBENCH_NO_PROGRESS=1

# Only what serving imports (versions as in envs/requirements.txt; pyyaml and jsonschema for the
# command line's error types): no MLflow, Snakemake, pandas, albumentations.
RUN pip install --index-url "$TORCH_INDEX" torch==2.13.0 \
 && pip install numpy==2.4.6 pillow==13.0.0 flask==3.1.3 tqdm pyyaml jsonschema

WORKDIR /opt/segbench
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-deps . && rm -rf /opt/segbench/src \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin segbench

# metrics.jso[n]: copied when present (a wildcard may match nothing when other sources match)
COPY ${RUN_DIR}/run.json ${RUN_DIR}/model.pt ${RUN_DIR}/metrics.jso[n] /srv/run/

USER segbench
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/api/info', timeout=4)"
# Limits: add e.g. --max-upload-mb 10 --max-pixels 4194304 --threads 4 after the image name
ENTRYPOINT ["segbench", "serve", "/srv/run", "--host", "0.0.0.0", "--port", "8000"]
