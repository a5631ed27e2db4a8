#!/usr/bin/env bash
# A rehearsal of gpu_host/pipeline.sh on this machine, call by call as the GPU host gets them: a
# temporary folder stands in for the host (GPU_HOME), a venv with a few packages of its own for its
# python3, and each call runs in a fresh clone of this checkout's HEAD with only the parts that call
# would carry and an empty $OUT. The wheels are this machine's (its Python, its platform); the run
# uses configs/smoke.yaml (--tiny) and no GPU (--cpu).
#
#   bash gpu_host/rehearsal.sh [--no-git]      # --no-git: the calls see no git
#   REHEARSAL=DIR bash gpu_host/rehearsal.sh --run-only [--no-git]   # the run call again, same host
#
# Environment: REHEARSAL (the folder, default a new temporary one), FULL (a full wheelhouse for this
# machine, made there when absent), PY and UV (a `make setup` venv's python and uv), KERAS_BACKEND.
set -euo pipefail

REPO=$(git rev-parse --show-toplevel)
R=${REHEARSAL:-$(mktemp -d /tmp/gpu-rehearsal.XXXX)}
PY=$(realpath "${PY:-$REPO/.venv/bin/python}")
UV=$(realpath "${UV:-$REPO/.venv/uv/bin/uv}")
export FULL=${FULL:-$R/wheelhouse-full} PY UV TARGET_PYTHON= TARGET_PLATFORM= PARTS=$R/parts
export GPU_HOME=$R/host HOST_PYTHON=$R/host-python/bin/python KERAS_BACKEND=${KERAS_BACKEND:-jax}
no_git=0 run_only=0
for arg in "$@"; do
    case "$arg" in
    --no-git) no_git=1 ;;
    --run-only) run_only=1 ;;
    *) echo "usage: $0 [--no-git] [--run-only]" >&2; exit 2 ;;
    esac
done
mkdir -p "$R"
say() { echo "[$(date -u +%H:%M:%S)] $*"; }

# What the stand-in host has of its own, as a GPU image has its JAX, numpy and friends.
HOST_PACKAGES=(jax jaxlib numpy scipy ml-dtypes pandas h5py pyyaml jinja2 onnx onnxruntime protobuf)

# PATH without git: every other program of PATH, linked into one folder.
without_git() {
    local bin=$R/bin-without-git dir exe
    rm -rf "$bin" && mkdir -p "$bin"
    IFS=: read -ra dirs <<<"$PATH"
    for dir in "${dirs[@]}"; do
        for exe in "$dir"/*; do
            [ -x "$exe" ] && [ ! -e "$bin/$(basename "$exe")" ] && ln -s "$exe" "$bin/$(basename "$exe")"
        done
    done
    rm -f "$bin/git"
    echo "$bin"
}

# One remote call: the shell command CMD in a fresh clone of HEAD carrying CARRY (comma-separated names
# of parts, may be empty), with an empty $OUT (R/out-N) and a PATH without git for --no-git.
calls=0
call() {
    local carry=$1 cmd=$2 step_path=$PATH
    calls=$((calls + 1))
    local tree=$R/tree-$calls out=$R/out-$calls started=$SECONDS
    rm -rf "$tree" "$out" && git clone -q "$REPO" "$tree" && mkdir -p "$tree/.gpu" "$out"
    for part in ${carry//,/ }; do cp "$PARTS/$part" "$tree/.gpu/"; done
    [ $no_git = 1 ] && step_path=$(without_git)
    say "call $calls: $cmd (carrying ${carry:-nothing})"
    (cd "$tree" && PATH=$step_path OUT=$out bash -c "$cmd") 2>&1 | tee "$R/call-$calls.log"
    local rc=${PIPESTATUS[0]}
    say "call $calls: exit $rc after $((SECONDS - started)) s; \$OUT: $(ls "$out" | tr '\n' ' ')"
    rm -rf "$tree"
    return "$rc"
}

began=$SECONDS
cd "$REPO"
if [ $run_only = 1 ]; then
    [ -x "$GPU_HOME/venv/bin/prefect" ] || { echo "error: $GPU_HOME has no install: rehearse without --run-only first" >&2; exit 2; }
    calls=$(ls -d "$R"/out-* | wc -l)
    call "" "bash gpu_host/pipeline.sh run --tiny --cpu"
    say "run: $((SECONDS - began)) s; record in $R/out-$calls"
    exit
fi
if [ ! -x "$HOST_PYTHON" ]; then
    [ -f "$FULL/requirements.txt" ] || { say "full wheelhouse for this machine -> $FULL"; bash gpu_host/parts.sh full; }
    python3 -m venv "$R/host-python"
    pins=()
    for name in "${HOST_PACKAGES[@]}"; do pins+=("$(grep -iE "^${name}==" "$FULL/requirements.txt" | cut -d' ' -f1)"); done
    "$HOST_PYTHON" -m pip install -q --no-index --find-links "$FULL" "${pins[@]}"
    say "stand-in host python: $("$HOST_PYTHON" -m pip freeze | wc -l) packages"
fi

# The order docs/gpu-host.md gives: the archive's parts first; the wheelhouse is cut from the freeze
# the first call brings back, and MANIFEST travels again with its first part.
rm -rf "$PARTS" && bash gpu_host/parts.sh archive
call "MANIFEST,cifar-10-python.tar.gz.part-00" \
    "bash gpu_host/pipeline.sh facts && bash gpu_host/pipeline.sh stash .gpu/MANIFEST .gpu/cifar-10-python.tar.gz.part-00"
cut_started=$SECONDS
bash gpu_host/parts.sh wheels "$R/out-1/host-freeze.txt"
say "wheelhouse cut from the freeze in $((SECONDS - cut_started)) s"
for part in cifar-10-python.tar.gz.part-01 cifar-10-python.tar.gz.part-02; do
    [ -f "$PARTS/$part" ] && call "$part" "bash gpu_host/pipeline.sh stash .gpu/$part"
done
for part in $(cd "$PARTS" && ls -- wheelhouse.tar.part-*); do
    call "MANIFEST,$part" "bash gpu_host/pipeline.sh stash .gpu/MANIFEST .gpu/$part"
done
call "" "bash gpu_host/pipeline.sh install"
call "" "bash gpu_host/pipeline.sh run --tiny --cpu"
say "rehearsal: $calls calls, $((SECONDS - began)) s; record in $R/out-$calls"
