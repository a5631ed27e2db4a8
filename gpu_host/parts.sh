#!/usr/bin/env bash
# The parts gpu_host/pipeline.sh carries to a GPU host, made here where PyPI is reachable: the CIFAR-10
# archive and a wheelhouse, each cut into parts small enough for one remote call (the call carries
# at most 64 MiB, the working tree included), with MANIFEST giving each whole file's sha256.
#
#   bash gpu_host/parts.sh full                 # every locked wheel for the target, once, into FULL
#   bash gpu_host/parts.sh archive [ARCHIVE]    # the archive's parts (default ../shared/data/cifar-10/...)
#   bash gpu_host/parts.sh wheels FREEZE        # FULL minus the host's `pip freeze` (seconds, no index)
#
# Environment: PARTS (default .gpu: git-ignored, in the checkout the remote call sends), PART_SIZE (58M),
# EXTRAS (cpu,jax: TensorFlow for the ONNX export, JAX only where the host lacks its own),
# TARGET_PYTHON (3.12) and TARGET_PLATFORM (manylinux_2_28_x86_64), both empty for this machine;
# FULL (the full wheelhouse, default /tmp/gpu-wheelhouse-full); UV and PY (the tools of a `make setup` venv).
set -euo pipefail

PARTS=${PARTS:-.gpu}
PART_SIZE=${PART_SIZE:-58M}
EXTRAS=${EXTRAS:-cpu,jax}
TARGET_PYTHON=${TARGET_PYTHON-3.12}
TARGET_PLATFORM=${TARGET_PLATFORM-manylinux_2_28_x86_64}
FULL=${FULL:-/tmp/gpu-wheelhouse-full}
PY=${PY:-.venv/bin/python}
UV=${UV:-.venv/uv/bin/uv}
target=(${TARGET_PYTHON:+--python-version "$TARGET_PYTHON"} ${TARGET_PLATFORM:+--platform "$TARGET_PLATFORM"})
mkdir -p "$PARTS"

# Cut FILE into PARTS/<name>.part-NN and record its sha256 in PARTS/MANIFEST (replacing an older line).
cut_parts() {
    local file=$1 name
    name=$(basename "$file")
    rm -f "$PARTS/$name".part-*
    split -b "$PART_SIZE" -d "$file" "$PARTS/$name.part-"
    touch "$PARTS/MANIFEST"
    { grep -v "  $name\$" "$PARTS/MANIFEST" || true; sha256sum "$file" | awk -v n="$name" '{ print $1 "  " n }'; } \
        >"$PARTS/MANIFEST.new"
    mv "$PARTS/MANIFEST.new" "$PARTS/MANIFEST"
    ls -l "$PARTS/$name".part-*
}

case "${1:-}" in
full)
    "$PY" -m tools.wheelhouse "$FULL" --uv "$UV" --extras "$EXTRAS" "${target[@]}"
    ;;
archive)
    archive=${2:-../shared/data/cifar-10/cifar-10-python.tar.gz}
    cut_parts "$archive"
    ;;
wheels)
    [ -f "${2:-}" ] || { echo "error: wheels needs the host's pip freeze (gpu_host/pipeline.sh facts writes it)" >&2; exit 2; }
    [ -f "$FULL/requirements.txt" ] || { echo "error: $FULL is no wheelhouse: run '$0 full' first" >&2; exit 2; }
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$PY" -m tools.wheelhouse "$work/wheelhouse" --uv "$UV" --extras "$EXTRAS" "${target[@]}" \
        --have "$2" --wheels-from "$FULL"
    tar -C "$work/wheelhouse" -cf "$work/wheelhouse.tar" .
    cut_parts "$work/wheelhouse.tar"
    ;;
*)
    echo "usage: $0 full | archive [ARCHIVE] | wheels FREEZE" >&2
    exit 2
    ;;
esac
echo "MANIFEST:" && cat "$PARTS/MANIFEST"
