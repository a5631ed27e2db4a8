#!/usr/bin/env bash
# The device-machine side of the full-size GPU experiment (bench/gpu_full_size.py), one step per call.
#
# The remote-command channel to the GPU host carries at most 64 MiB a call, so the 163 MiB archive travels as three parts
# (`split -n 3 -d ARCHIVE .gpu/part-`), one per consecutive call while the machine stays warm; each
# call stashes its part outside the working tree, where the next call finds it.
#   bash bench/gpu_device.sh stash .gpu/part-00   # keep one part
#   bash bench/gpu_device.sh setup                 # carried keras wheels -> /tmp/site; what the machine is
#   bash bench/gpu_device.sh rehearse              # full-size models, 2 epochs each, on random images
#   bash bench/gpu_device.sh full SHA256 [args]    # join, check, run every run of gpu_full_size.py
set -euo pipefail
STASH=/root/cifar-parts
OUT=${OUT:-gpu_runs/out}
export KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"

install_wheels() {  # the wheels bench/gpu_wheels.txt lists, carried in .whl/
    python3 -c "import keras, pydantic" 2>/dev/null && return
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
}

case "${1:-}" in
stash)
    mkdir -p "$STASH" && cp "$2" "$STASH/" && ls -l "$STASH"
    ;;
setup)
    install_wheels
    { nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
      python3 -c 'import jax, keras, numpy; print("jax", jax.__version__, jax.devices(), "keras", keras.__version__, "numpy", numpy.__version__)'
      lscpu | grep -E "Model name|^CPU\(s\)"
      echo "VGG16-like weight files over 10 MB on the image:"
      timeout 60 find / -xdev -iname '*vgg16*' -size +10M 2>/dev/null || true
    } 2>&1 | tee "$OUT/env.txt"
    ;;
rehearse)
    install_wheels
    python3 bench/gpu_full_size.py --synthetic 1000 --work /root/rehearsal --out "$OUT/rehearsal" \
        --runs alexnet vgg16 --set alexnet.epochs=2 alexnet.warmup_epochs=1 vgg16.epochs=2 vgg16.warmup_epochs=1
    ;;
full)
    install_wheels
    cat "$STASH"/part-* > /root/cifar-10-python.tar.gz
    echo "$2  /root/cifar-10-python.tar.gz" | sha256sum -c -
    python3 bench/gpu_full_size.py --archive /root/cifar-10-python.tar.gz --sha256 "$2" \
        --validated .gpu/validated --work /root/runs --out "$OUT" "${@:3}"
    ;;
*)
    echo "usage: $0 stash PART | setup | rehearse | full SHA256 [gpu_full_size.py args]" >&2
    exit 2
    ;;
esac
