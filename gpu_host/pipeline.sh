#!/usr/bin/env bash
# The whole pipeline on a GPU host reached one remote command at a time: the Prefect deployment
# cifar10-pipeline/on-demand, picked up by a `gpu` process worker there, runs every stage through the
# real `dvc repro`. This script only stages what the host lacks (wheels, the archive) and calls the
# real commands; it plays no part of DVC or of the flow.
#
# Each remote call runs in a fresh copy of the working tree and carries at most 64 MiB, while the
# machine stays up between consecutive calls; so every step keeps what it made under GPU_HOME
# (default /root/gpu-pipeline), outside the tree, and writes what comes back under $OUT.
# gpu_host/parts.sh makes the parts here; README "On a GPU" gives the order of the calls.
#
#   bash gpu_host/pipeline.sh facts                # Python, git, make, GPUs and `pip freeze` -> $OUT
#   bash gpu_host/pipeline.sh stash FILE...        # keep carried parts (and MANIFEST) in GPU_HOME/stash
#   bash gpu_host/pipeline.sh install              # join and check the parts, unpack, make setup WHEELHOUSE=...
#   bash gpu_host/pipeline.sh run [--tiny] [--overlay FILE]... [--cpu]
#
# `run` sets params.yaml to the defaults + configs/vgg16-scratch.yaml (ImageNet weights cannot be
# downloaded there) + the stashed archive as data.url; --tiny adds configs/smoke.yaml, --overlay
# any other overlay; --cpu drops require_gpu (a rehearsal on a machine without one). Without git it
# runs DVC with core.no_scm (docs/gpu-host.md says what that gives up).
#
# Environment: GPU_HOME; HOST_PYTHON (default python3: the host's interpreter, whose packages the
# venv sees); KERAS_BACKEND (default jax); RUN_TIMEOUT (seconds the flow run may take, default 3000).
set -euo pipefail

GPU_HOME=${GPU_HOME:-/root/gpu-pipeline}
STASH=$GPU_HOME/stash
VENV=$GPU_HOME/venv
CHECKOUT=$GPU_HOME/checkout
HOST_PYTHON=${HOST_PYTHON:-python3}
OUT=${OUT:-$GPU_HOME/out}
TREE=$(pwd)
export KERAS_BACKEND=${KERAS_BACKEND:-jax}
export DVC_NO_ANALYTICS=1 DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false GX_ANALYTICS_ENABLED=false
mkdir -p "$OUT" "$STASH"

say() { echo "[$(date -u +%H:%M:%S)] $*"; }

# The sha256 the manifest records for NAME.
manifest_sha() { awk -v n="$1" '$2 == n { print $1 }' "$STASH/MANIFEST"; }

# The working tree of this call, without the carried parts, as a fresh checkout at CHECKOUT.
fresh_checkout() {
    rm -rf "$CHECKOUT" && mkdir -p "$CHECKOUT"
    tar -C "$TREE" --exclude=./.gpu --exclude=./.venv --exclude=./.git -cf - . | tar -C "$CHECKOUT" -xf -
}

facts() {
    {
        echo "python: $(command -v "$HOST_PYTHON") $("$HOST_PYTHON" --version 2>&1)"
        for tool in git make nvidia-smi; do echo "$tool: $(command -v $tool || echo missing)"; done
        ! command -v nvidia-smi >/dev/null || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
        "$HOST_PYTHON" -c 'import jax; print("jax", jax.__version__, jax.devices())' 2>&1 | tail -1
        echo "cpus: $(nproc); disk free under $GPU_HOME: $(df -h --output=avail "$GPU_HOME" | tail -1)"
    } | tee "$OUT/host.txt"
    "$HOST_PYTHON" -m pip freeze >"$OUT/host-freeze.txt"
    say "wrote $OUT/host.txt and $OUT/host-freeze.txt ($(wc -l <"$OUT/host-freeze.txt") packages)"
}

stash() {
    [ $# -gt 0 ] || { echo "error: stash needs the files to keep" >&2; exit 2; }
    cp "$@" "$STASH/"
    say "stashed $*"
    du -sh "$STASH" && ls "$STASH"
}

install() {
    [ -f "$STASH/MANIFEST" ] || { echo "error: $STASH/MANIFEST missing: stash it with the first part" >&2; exit 2; }
    local name parts sha
    # MANIFEST: "<sha256>  <file>" for each file sent in parts (<file>.part-NN).
    while read -r sha name; do
        parts=("$STASH/$name".part-*)
        [ -e "${parts[0]}" ] || { echo "error: no parts of $name in $STASH" >&2; exit 2; }
        cat "${parts[@]}" >"$GPU_HOME/$name"
        echo "$sha  $GPU_HOME/$name" | sha256sum -c - || {
            echo "error: $name from ${#parts[@]} parts does not match MANIFEST: a part is missing or damaged" >&2
            exit 2
        }
    done <"$STASH/MANIFEST"
    rm -rf "$GPU_HOME/wheelhouse" && mkdir -p "$GPU_HOME/wheelhouse"
    tar -C "$GPU_HOME/wheelhouse" -xf "$GPU_HOME/wheelhouse.tar"
    say "wheelhouse: $(ls "$GPU_HOME"/wheelhouse/*.whl | wc -l) wheels"
    fresh_checkout
    rm -rf "$VENV"
    local started=$SECONDS
    if command -v make >/dev/null; then
        make -C "$CHECKOUT" setup VENV="$VENV" PYTHON="$HOST_PYTHON" WHEELHOUSE="$GPU_HOME/wheelhouse"
    else
        echo "error: make is missing on this host; install it or run the commands of the Makefile's setup rule" >&2
        exit 2
    fi
    say "make setup: $((SECONDS - started)) s"
    {
        "$VENV/bin/python" -c 'import sys; print("venv python", sys.version.split()[0])'
        "$VENV/bin/python" -c 'import keras, dvc, prefect, great_expectations as gx, tensorflow as tf, jax
print("keras", keras.__version__, "| dvc", dvc.__version__, "| prefect", prefect.__version__, "| gx", gx.__version__,
      "| tensorflow", tf.__version__, "| jax", jax.__version__, jax.__file__)'
        (cd "$CHECKOUT" && "$VENV/bin/python" -m tasks.core.devices)
    } 2>&1 | tee "$OUT/install.txt"
    "$VENV/bin/python" -m pip freeze --all >"$OUT/venv-freeze.txt"
}

run() {
    local tiny=0 cpu=0 overlays=()
    while [ $# -gt 0 ]; do
        case "$1" in
        --tiny) tiny=1 ;;
        --cpu) cpu=1 ;;
        --overlay) overlays+=("$2"); shift ;;
        *) echo "error: run: unknown option $1" >&2; exit 2 ;;
        esac
        shift
    done
    [ -x "$VENV/bin/prefect" ] || { echo "error: $VENV has no prefect: run the install step first" >&2; exit 2; }
    export PATH="$VENV/bin:$PATH"
    fresh_checkout
    cd "$CHECKOUT"
    local archive=$GPU_HOME/cifar-10-python.tar.gz sha
    sha=$(manifest_sha cifar-10-python.tar.gz)
    [ -f "$archive" ] && [ -n "$sha" ] || { echo "error: no checked archive in $GPU_HOME: run install" >&2; exit 2; }

    # The run's params: defaults + overlays, written into params.yaml (so the on-demand deployment
    # runs plain `dvc repro` stage by stage; `set_params` would need git for `dvc exp run`).
    # Later overlays win: the from-scratch VGG16, then the toy size, then the caller's own.
    local base=(configs/vgg16-scratch.yaml)
    [ $tiny = 1 ] && base+=(configs/smoke.yaml)
    overlays=("${base[@]}" "${overlays[@]}")
    printf 'data:\n  url: %s\n  sha256: %s\n' "$archive" "$sha" >"$GPU_HOME/data-overlay.yaml"
    python - "$GPU_HOME/data-overlay.yaml" "${overlays[@]}" <<'EOF'
import sys
from pathlib import Path

import yaml

from tools.overrides import load_overlay, merged

params = yaml.safe_load(Path("params.yaml").read_text())
for overlay in sys.argv[1:]:
    params = merged(params, load_overlay(overlay))
Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
EOF
    say "params.yaml = defaults + ${overlays[*]} + the stashed archive"

    if command -v git >/dev/null; then
        git init -q && git add -A
        git -c user.name=gpu-pipeline -c user.email=gpu-pipeline@localhost commit -qm "run on $(hostname)"
        say "git: the checkout is a fresh repository (HEAD $(git rev-parse --short HEAD))"
    else
        dvc config --local core.no_scm true
        say "git: missing; DVC runs with core.no_scm (no experiments, no diffs against revisions)"
    fi

    local logs=$GPU_HOME/logs
    rm -rf "$logs" "$GPU_HOME/prefect-home" && mkdir -p "$logs"
    local port
    port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    export PREFECT_HOME=$GPU_HOME/prefect-home PREFECT_API_URL=http://127.0.0.1:$port/api
    # The server on loopback only, with an auth string as a team would run it (docs/security.md).
    PREFECT_API_AUTH_STRING="gpu:$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
    export PREFECT_API_AUTH_STRING PREFECT_SERVER_API_AUTH_STRING=$PREFECT_API_AUTH_STRING
    local started=$SECONDS
    server='' worker=''
    # Whatever happens, the worker and the server stop when this step does (the worker on SIGINT).
    trap '[ -z "$worker" ] || kill -INT $worker 2>/dev/null; [ -z "$server" ] || kill $server 2>/dev/null; wait' EXIT
    prefect server start --host 127.0.0.1 --port "$port" >"$logs/server.log" 2>&1 &
    server=$!
    until python -c 'import base64, os, urllib.request as u
r = u.Request(os.environ["PREFECT_API_URL"] + "/health")
r.add_header("Authorization", "Basic " + base64.b64encode(os.environ["PREFECT_API_AUTH_STRING"].encode()).decode())
u.urlopen(r, timeout=2)' 2>/dev/null; do
        kill -0 $server 2>/dev/null || { cat "$logs/server.log"; echo "error: prefect server exited" >&2; exit 1; }
        [ $((SECONDS - started)) -lt 300 ] || { echo "error: prefect server not healthy after 300 s" >&2; exit 1; }
        sleep 1
    done
    say "prefect server healthy after $((SECONDS - started)) s"
    prefect --no-prompt work-pool create gpu --type process >"$logs/deploy.log" 2>&1
    prefect --no-prompt deploy --all >>"$logs/deploy.log" 2>&1 || { cat "$logs/deploy.log"; exit 1; }
    say "deployed: $(grep -c "Deployment '" "$logs/deploy.log" || true) deployments"
    # SIGINT stops a worker (SIGTERM does not); a background job starts with SIGINT ignored, so reset it.
    python -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])' \
        prefect worker start --pool gpu >"$logs/worker.log" 2>&1 &
    worker=$!

    local name="gpu-pipeline-$(date -u +%Y%m%dT%H%M%S)" params=()
    [ $cpu = 1 ] || params=(--param require_gpu=true)
    started=$SECONDS
    set +e
    prefect --no-prompt deployment run cifar10-pipeline/on-demand --flow-run-name "$name" "${params[@]}" \
        --watch --watch-interval 5 --watch-timeout "${RUN_TIMEOUT:-3000}" 2>&1 | tee "$logs/deployment-run.log"
    set -e
    local wall=$((SECONDS - started)) id
    id=$(grep -oE 'UUID: [0-9a-f-]{36}' "$logs/deployment-run.log" | head -1 | cut -d' ' -f2)
    kill -INT $worker 2>/dev/null; wait $worker 2>/dev/null || true
    worker=''
    if [ -n "$id" ]; then
        prefect --no-prompt flow-run logs "$id" >"$logs/flow-run.log" 2>&1 || true
        prefect --no-prompt flow-run inspect "$id" >"$logs/flow-run-inspect.txt" 2>&1 || true
        prefect --no-prompt flow-run inspect "$id" -o json >"$logs/flow-run.json" 2>/dev/null || true
    fi
    kill $server 2>/dev/null; wait $server 2>/dev/null || true
    server=''
    collect "$logs" "$name" "$wall"
}

# The record of the run: a summary and the flow log beside record.tgz (the stage outputs, the logs,
# the host), at most a few files under $OUT.
collect() {
    local logs=$1 name=$2 wall=$3 state
    nvidia-smi >"$logs/nvidia-smi.txt" 2>&1 || true
    python -m pip freeze --all >"$logs/pip-freeze.txt" 2>&1 || true
    cp params.yaml "$logs/params.yaml"
    state=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["state"]["type"])' "$logs/flow-run.json" \
        2>/dev/null || echo UNKNOWN)
    {
        echo "flow run $name: $state after $wall s (deployment run to final state)"
        echo "host: $(hostname), $(nproc) CPUs; KERAS_BACKEND=$KERAS_BACKEND"
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
        echo "per stage, as the flow logged it:"
        grep -oE "stage '[a-z0-9_]+' [a-z]+ in [0-9.]+ s" "$logs/flow-run.log" | sed 's/^/  /' || echo "  (none logged)"
        echo "metrics:"
        for f in metrics/*.json; do echo "  $f: $(tr -d '\n ' <"$f" | cut -c1-400)"; done
    } | tee "$logs/summary.txt"
    tar -czf "$OUT/record.tgz" --ignore-failed-read dvc.lock params.yaml metrics dvclive plots reports/report.md \
        reports/report.html reports/figures reports/validation.json models/*.meta.json -C "$GPU_HOME" logs 2>/dev/null \
        || true
    cp "$logs/summary.txt" "$logs/flow-run.log" "$OUT/"
    say "record: $OUT/record.tgz ($(du -h "$OUT/record.tgz" | cut -f1)), $OUT/summary.txt, $OUT/flow-run.log"
    [ "$state" = COMPLETED ]
}

step=${1:-}
[ $# -gt 0 ] && shift
case "$step" in
facts | stash | install | run) "$step" "$@" ;;
*)
    echo "usage: $0 facts | stash FILE... | install | run [--tiny] [--overlay FILE]... [--cpu]" >&2
    exit 2
    ;;
esac
