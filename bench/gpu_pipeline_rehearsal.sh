#!/usr/bin/env bash
# A rehearsal of bench/gpu_pipeline.sh on this machine, call by call as the GPU host gets them: a
# temporary folder stands in for the host (GPU_HOME), a venv with a few packages of its own for its
# python3, and each call runs in a fresh clone of this checkout's HEAD with only the parts that call
# would carry and an empty $OUT. The wheels are this machine's (its Python, its platform); the run
# uses configs/smoke.yaml (--tiny) and no GPU (--cpu).
#
#   bash bench/gpu_pipeline_rehearsal.sh [--no-git]      # --no-git: the install and run calls see no git
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
no_git=0
[ "${1:-}" = --no-git ] && no_git=1
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

# One remote call: `bash bench/gpu_pipeline.sh STEP ARGS...` in a fresh clone carrying CARRY (comma-separated
# part names, may be empty); its $OUT is R/out-N.
calls=0
call() {
    local carry=$1 step_path=$PATH
    shift
    calls=$((calls + 1))
    local tree=$R/tree-$calls out=$R/out-$calls started=$SECONDS
    rm -rf "$tree" "$out" && git clone -q "$REPO" "$tree" && mkdir -p "$tree/.gpu" "$out"
    for part in ${carry//,/ }; do cp "$PARTS/$part" "$tree/.gpu/"; done
    [ $no_git = 1 ] && [ "$1" != facts ] && [ "$1" != stash ] && step_path=$(without_git)
    say "call $calls: bench/gpu_pipeline.sh $* (carrying ${carry:-nothing})"
    (cd "$tree" && PATH=$step_path OUT=$out bash bench/gpu_pipeline.sh "$@") 2>&1 | tee "$R/call-$calls.log"
    local rc=${PIPESTATUS[0]}
    say "call $calls: exit $rc after $((SECONDS - started)) s; \$OUT: $(ls "$out" | tr '\n' ' ')"
    rm -rf "$tree"
    return "$rc"
}

began=$SECONDS
if [ ! -x "$HOST_PYTHON" ]; then
    [ -f "$FULL/requirements.txt" ] || { say "full wheelhouse for this machine -> $FULL"; bash "$REPO/bench/gpu_pipeline_parts.sh" full; }
    python3 -m venv "$R/host-python"
    pins=()
    for name in "${HOST_PACKAGES[@]}"; do pins+=("$(grep -iE "^${name}==" "$FULL/requirements.txt" | cut -d' ' -f1)"); done
    "$HOST_PYTHON" -m pip install -q --no-index --find-links "$FULL" "${pins[@]}"
    say "stand-in host python: $("$HOST_PYTHON" -m pip freeze | wc -l) packages"
fi
[ -f "$FULL/requirements.txt" ] || bash "$REPO/bench/gpu_pipeline_parts.sh" full

cd "$REPO"
call "" facts
bash bench/gpu_pipeline_parts.sh archive
bash bench/gpu_pipeline_parts.sh wheels "$R/out-1/host-freeze.txt"
for part in $(cd "$PARTS" && ls -- *.part-*); do call "MANIFEST,$part" stash ".gpu/MANIFEST" ".gpu/$part"; done
call "" install
call "" run --tiny --cpu
say "rehearsal: $calls calls, $((SECONDS - began)) s; record in $R/out-$calls"
