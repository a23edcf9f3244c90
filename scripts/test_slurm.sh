#!/usr/bin/env bash
# End-to-end test of workflow/profiles/slurm on a real, throw-away one-node SLURM cluster.
#
#   scripts/test_slurm.sh        (as root; CI runs it through `make test` -> tests/test_slurm.py)
#
# 1. installs Debian's slurm-wlm and munge with apt-get when they are missing;
# 2. starts munged, slurmctld and slurmd on 127.0.0.1 (config in /etc/slurm/slurm.conf: the
#    plugin's job step drops SLURM_CONF) and an MLflow server (scripts/mlflow_server.sh);
# 3. runs the tiny workflow twice in temporary folders: locally with the default profile,
#    then with --profile workflow/profiles/slurm plus command-line overrides (site variables,
#    --jobs, status command, and the MLflow server as the config's tracking URI);
# 4. checks that every job of the SLURM run went through sbatch (a SLURM job id per job in
#    Snakemake's log, confirmed by the controller's log), that the runs' weights, metrics,
#    histories, confusion matrices and tables equal the local run's, and that the MLflow
#    server holds every run;
# 5. stops every daemon it started by the PID it started (on any exit), removes its
#    slurm.conf and its temporary folder (SEGBENCH_TEST_KEEP=1 keeps the folder).
#
# Exit status: 0 passed, 1 failed, 77 skipped (the reason is printed: not root, no apt-get,
# a SLURM already installed or running here, ...). Takes about 3 minutes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
BIN="$(dirname "$PYTHON")"
MARKER="# written by segbench scripts/test_slurm.sh"
CONF=/etc/slurm/slurm.conf
T0=$SECONDS

say() { echo "[test_slurm $(( SECONDS - T0 ))s] $*"; }
skip() { echo "SKIPPED: $*"; exit 77; }
fail() { echo "FAILED: $*" >&2; exit 1; }

# ---------------------------------------------------------------- can we run here?
[[ "$(uname -s)" == Linux ]] || skip "SLURM test needs Linux"
[[ "$(id -u)" == 0 ]] || skip "SLURM test needs root (it installs slurm-wlm and munge and starts their daemons)"
[[ -x "$PYTHON" ]] || skip "no Python at $PYTHON (run \`make install\` first, or set PYTHON)"
"$PYTHON" -c "import snakemake_executor_plugin_slurm" 2>/dev/null \
  || fail "snakemake-executor-plugin-slurm is not installed in $BIN (envs/requirements.txt has it: make install)"
if [[ -e "$CONF" ]] && ! grep -qF "$MARKER" "$CONF"; then
  skip "$CONF exists and is not ours: this machine has a real SLURM set-up, which this test must not touch"
fi
for d in slurmctld slurmd; do
  for pid_dir in /proc/[0-9]*; do
    if [[ "$(cat "$pid_dir/comm" 2>/dev/null)" == "$d" ]]; then
      skip "a $d is already running here (PID ${pid_dir#/proc/}); not touching it"
    fi
  done
done
for port in 6817 6818; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then skip "port $port (SLURM) is in use"; fi
done

missing=()
for b in slurmctld slurmd sbatch squeue munged munge; do command -v "$b" >/dev/null || missing+=("$b"); done
if ((${#missing[@]})); then
  command -v apt-get >/dev/null || skip "slurm-wlm/munge missing (${missing[*]}) and there is no apt-get to install them"
  say "installing slurm-wlm and munge with apt-get (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq --no-install-recommends slurm-wlm munge >/tmp/segbench-apt.log 2>&1; then
    apt-get update -qq >>/tmp/segbench-apt.log 2>&1 || true
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >>/tmp/segbench-apt.log 2>&1 \
      || skip "apt-get could not install slurm-wlm and munge (no package repository reachable?): $(tail -3 /tmp/segbench-apt.log | tr '\n' ' ')"
  fi
  say "installed"
fi

# ---------------------------------------------------------------- clean-up of what we start
WORK="$(mktemp -d /tmp/segbench-slurm-test.XXXXXX)"
chmod 755 "$WORK"
PIDS=()          # "name:pid" of the daemons we started, stopped in reverse order
MLFLOW_STATE="$WORK/mlflow-server"
cleanup() {
  local rc=$?
  set +e
  if command -v scancel >/dev/null && [[ ${#PIDS[@]} -gt 0 ]]; then scancel --quiet --full "--partition=segbench" 2>/dev/null; fi
  [[ -f "$MLFLOW_STATE/server.pid" ]] && "$ROOT/scripts/mlflow_server.sh" stop --state-dir "$MLFLOW_STATE" >/dev/null
  for ((i=${#PIDS[@]}-1; i>=0; i--)); do
    local name="${PIDS[i]%%:*}" pid="${PIDS[i]##*:}"
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [[ -f "$CONF" ]] && grep -qF "$MARKER" "$CONF"; then rm -f "$CONF"; fi
  if [[ $rc -ne 0 && $rc -ne 77 ]]; then
    for f in "$WORK"/slurm/slurmctld.log "$WORK"/slurm/slurmd.log "$WORK"/slurm-run/snakemake.out; do
      [[ -f "$f" ]] && { echo "== tail of $f" >&2; tail -25 "$f" >&2; }
    done
  fi
  if [[ "${SEGBENCH_TEST_KEEP:-0}" == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
  say "daemons stopped; exit $rc"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- munge
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "munged already running: using it"
else
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
  install -d -o munge -g munge -m 700 /etc/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  # setpriv execs munged as the munge user: $! is munged's own PID
  setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground \
    >"$WORK/munged.out" 2>&1 &
  PIDS+=("munged:$!")
  for _ in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null || fail "munged did not start: $(cat "$WORK/munged.out")"
  say "munged started (PID ${PIDS[-1]##*:})"
fi

# ---------------------------------------------------------------- slurm
NODE="$(hostname -s)"
CPUS="$(nproc)"
# at least 4 slots, so that the first wave (generate, 2 profiles, mlflow_init) runs at once
SLOTS=$(( CPUS > 4 ? CPUS : 4 ))
MEM_MB=$(( $(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo) * 3 / 4 ))
mkdir -p "$WORK/slurm/state" "$WORK/slurm/spool" /etc/slurm
cat >"$CONF" <<EOF
$MARKER; removed when the test ends
ClusterName=segbench-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
# squeue must still see finished jobs when the plugin asks (no accounting here)
MinJobAge=300
SlurmdParameters=config_overrides
SlurmctldPidFile=$WORK/slurm/slurmctld.pid
SlurmdPidFile=$WORK/slurm/slurmd.pid
StateSaveLocation=$WORK/slurm/state
SlurmdSpoolDir=$WORK/slurm/spool
SlurmctldLogFile=$WORK/slurm/slurmctld.log
SlurmdLogFile=$WORK/slurm/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$SLOTS RealMemory=$MEM_MB State=UNKNOWN
# not the default partition: the jobs only land here if the profile passes the partition on
PartitionName=segbench Nodes=$NODE Default=NO MaxTime=INFINITE State=UP
PartitionName=other Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -D -i >"$WORK/slurm/slurmctld.out" 2>&1 &
PIDS+=("slurmctld:$!")
slurmd -D -N "$NODE" >"$WORK/slurm/slurmd.out" 2>&1 &
PIDS+=("slurmd:$!")
for _ in $(seq 1 100); do
  [[ "$(sinfo -h -p segbench -o %t 2>/dev/null)" == idle ]] && break; sleep 0.2
done
[[ "$(sinfo -h -p segbench -o %t 2>/dev/null)" == idle ]] || fail "the SLURM node did not come up: $(sinfo 2>&1)"
say "SLURM up: node $NODE, $SLOTS slots (CPUs $CPUS), partition segbench (slurmctld PID ${PIDS[-2]##*:}, slurmd PID ${PIDS[-1]##*:})"

# ---------------------------------------------------------------- the tiny workflow, twice
export PATH="$BIN:$PATH" SEGBENCH_NO_PROGRESS=1 NO_ALBUMENTATIONS_UPDATE=1 MPLBACKEND=Agg
mkdir -p "$WORK/local" "$WORK/slurm-run"
# the end-to-end test's tiny config: 2 models x 1 loss x 1 seed, 2 studies, 2 epochs
cp "$ROOT/tests/data/tiny_config.yaml" "$WORK/local/config.yaml"
cp "$ROOT/tests/data/tiny_config.yaml" "$WORK/slurm-run/config.yaml"

# the MLflow server starts (25-40 s) while the local run goes
MLFLOW_PORT=$("$PYTHON" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
( cd "$WORK/slurm-run" && "$ROOT/scripts/mlflow_server.sh" start --port "$MLFLOW_PORT" --state-dir "$MLFLOW_STATE" \
    --backend "$WORK/mlflow-server/mlflow.db" --artifacts "$WORK/mlflow-server/artifacts" --wait 240 \
    >"$WORK/mlflow-start.out" 2>&1 ) &
MLFLOW_STARTER=$!

say "local run (reference): snakemake --profile workflow/profiles/default"
t=$SECONDS
snakemake --snakefile "$ROOT/Snakefile" --directory "$WORK/local" --profile "$ROOT/workflow/profiles/default" \
  --cores "$CPUS" --retries 0 >"$WORK/local/snakemake.out" 2>&1 \
  || { tail -40 "$WORK/local/snakemake.out"; fail "the local run failed"; }
say "local run done in $(( SECONDS - t )) s"

wait "$MLFLOW_STARTER" || { cat "$WORK/mlflow-start.out"; fail "the MLflow server did not start"; }
say "$(grep 'server up' "$WORK/mlflow-start.out")"
MLFLOW_URL="http://127.0.0.1:$MLFLOW_PORT"

say "SLURM run: snakemake --profile workflow/profiles/slurm + overrides"
t=$SECONDS
# site variables (workflow/profiles/slurm): our partition; no GPUs on this node; small jobs
( cd "$WORK/slurm-run" && \
  SEGBENCH_SLURM_PARTITION=segbench SEGBENCH_SLURM_GPUS=0 \
  SEGBENCH_SLURM_SET="train:mem_mb=1000 evaluate:mem_mb=1000 profile:mem_mb=1000" \
  snakemake --snakefile "$ROOT/Snakefile" --profile "$ROOT/workflow/profiles/slurm" \
    --jobs 8 --retries 0 --latency-wait 10 --verbose \
    --slurm-status-command squeue --slurm-init-seconds-before-status-checks 6 \
    --config "mlflow={tracking_uri: $MLFLOW_URL}" \
    >"$WORK/slurm-run/snakemake.out" 2>&1 ) \
  || { tail -60 "$WORK/slurm-run/snakemake.out"; fail "the SLURM run failed"; }
say "SLURM run done in $(( SECONDS - t )) s"

# ---------------------------------------------------------------- checks
"$PYTHON" - "$WORK/local" "$WORK/slurm-run" "$WORK/slurm/slurmctld.log" "$MLFLOW_URL" <<'EOF'
import csv, json, re, sys
from pathlib import Path

import numpy as np
import torch

local, remote, ctld_log, mlflow_url = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
problems = []

# 1. every job went through sbatch
out = (remote / "snakemake.out").read_text()
stats = re.search(r"Job stats:\njob\s+count\n[- ]+\n(.*?)\ntotal\s+(\d+)", out, re.S)
counts = {line.split()[0]: int(line.split()[1]) for line in stats.group(1).splitlines()}
submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", out)
LOCAL = {"all", "report_inputs"}   # the Snakefile's local rules: they run in snakemake itself, not via sbatch
expected = sum(n for rule, n in counts.items() if rule not in LOCAL)
rules = {}
for jobid, log in submitted:
    rule = re.search(r"/rule_([^/]+)/", log).group(1)
    rules[rule] = rules.get(rule, 0) + 1
    if not Path(log).is_file():
        problems.append(f"SLURM log {log} of job {jobid} is missing")
completed = set(re.findall(r"_job_complete: JobId=(\d+) WEXITSTATUS 0", ctld_log.read_text()))
if len(submitted) != expected or rules != {r: n for r, n in counts.items() if r not in LOCAL}:
    problems.append(f"expected {expected} sbatch submissions ({counts}), found {len(submitted)} ({rules})")
not_done = sorted({j for j, _ in submitted} - completed, key=int)
if not_done:
    problems.append(f"SLURM jobs {not_done} did not complete with exit 0 according to slurmctld")
print(f"sbatch: {len(submitted)} jobs for {expected} non-local jobs of {len(set(counts) - LOCAL)} rules; "
      f"slurmctld saw {len(completed)} complete")

# 1b. the sbatch options the profile asks for (--verbose logs each call): train jobs get SIGTERM
# 300 s before their time limit (not B:, so the trainer gets it too) and one node; others no signal
calls = re.findall(r"sbatch call: (.*)", out)
signal_of = {}
for call in calls:
    rule = re.search(r"/rule_([^/]+)/", call)
    rule = rule.group(1) if rule else "?"
    has_signal = "--signal=TERM@300" in call
    # tiny runs: the cost estimate's time limit is its floor, 2 hours
    if rule == "train" and not (has_signal and re.search(r"--nodes[= ]1\b", call) and re.search(r" -t '?120\b", call)):
        problems.append(f"a train job's sbatch call lacks --signal=TERM@300, --nodes=1 or -t 120: {call[:400]}")
    if rule != "train" and "--signal" in call:
        problems.append(f"a {rule} job's sbatch call asks for a signal: {call[:400]}")
    signal_of.setdefault(rule, set()).add(has_signal)
if len(calls) != len(submitted):
    problems.append(f"{len(calls)} sbatch calls logged for {len(submitted)} submissions")
print(f"sbatch options: train jobs {sorted(signal_of.get('train', []))} with --signal=TERM@300 and --nodes=1, "
      f"{len(calls)} calls in all")

# 2. the outputs equal the local run's (training is deterministic on CPU for the same threads)
runs = sorted(p.parent.relative_to(local) for p in (local / "results/runs").rglob("run.json"))
if not runs:
    problems.append("the local run has no run directories")
TIMING = {"eval_seconds", "metric_mpixel_per_s", "claim_metrics_seconds", "epoch_seconds", "time", "fps",
          "fps_std", "train_seconds", "wall_seconds_this_job"}
for run in runs:
    a, b = local / run, remote / run
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    diff = [k for k in ma if k not in TIMING and ma[k] != mb.get(k)]
    if diff:
        problems.append(f"{run}: metrics differ in {diff}")
    ha, hb = ([{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(open(d / "history.csv"))]
              for d in (a, b))
    if ha != hb:
        problems.append(f"{run}: history.csv differs")
    if not np.array_equal(np.load(a / "confusion.npy"), np.load(b / "confusion.npy")):
        problems.append(f"{run}: confusion.npy differs")
    wa, wb = (torch.load(d / "model.pt", weights_only=True) for d in (a, b))
    if wa.keys() != wb.keys() or not all(torch.equal(wa[k], wb[k]) for k in wa):
        problems.append(f"{run}: model.pt weights differ")
    ra, rb = (json.loads((d / "run.json").read_text()) for d in (a, b))
    if ra["config_hash"] != rb["config_hash"] or ra["threads"] != rb["threads"]:
        problems.append(f"{run}: run.json differs in config_hash or threads")
    print(f"{run}: identical (mIoU {ma['mIoU']:.6f}, {len(ha)} epochs)")
for table in sorted((local / "results/studies").glob("*/tables/summary.csv")):
    rel = table.relative_to(local)
    ta, tb = ([{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(open(d / rel))]
              for d in (local, remote))
    if ta != tb:
        problems.append(f"{rel} differs (timing columns aside)")
    else:
        print(f"{rel}: identical apart from fps")

# 3. MLflow: the jobs logged over http into the server
from mlflow import MlflowClient

client = MlflowClient(mlflow_url)
for rec in sorted((remote / "results/mlflow").rglob("*.json")):
    status = json.loads(rec.read_text()).get("status")
    if status != "logged":
        problems.append(f"{rec.relative_to(remote)}: status {status}")
for study in ("unet_segnet", "unet_only"):
    exp = client.get_experiment_by_name(f"segbench-{study}")
    if exp is None:
        problems.append(f"MLflow server has no experiment segbench-{study}")
        continue
    found = client.search_runs([exp.experiment_id], "tags.`segbench.kind` = 'run'")
    for r in found:
        key = r.data.tags["segbench.run_key"]
        want = json.loads((remote / "results/runs" / key / "metrics.json").read_text())["mIoU"]
        if r.data.metrics.get("final_mIoU") != want:
            problems.append(f"MLflow run {key} in {study}: final_mIoU {r.data.metrics.get('final_mIoU')} != {want}")
    print(f"MLflow {mlflow_url}: segbench-{study} has {len(found)} runs")
    if len(found) != (2 if study == "unet_segnet" else 1):
        problems.append(f"segbench-{study} has {len(found)} runs")

if problems:
    print("\n".join(["PROBLEMS:", *problems]), file=sys.stderr)
    sys.exit(1)
print("all checks passed")
EOF
say "PASSED"
