"""Which accelerators the active Keras backend sees, and a fail-fast check for ``require_gpu``."""

from __future__ import annotations

import os
import platform
import socket
import sys
from typing import Any

import keras

from tasks.errors import DeviceError
from tasks.precision import Gpu


def backend() -> str:
    return keras.backend.backend()


def visible_devices() -> list[str]:
    """Device names as the active backend lists them, e.g. ``['CPU:0']`` or ``['cuda:0', 'cuda:1']``."""
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf

        return [f"{d.device_type}:{d.name.rsplit(':', 1)[-1]}" for d in tf.config.list_physical_devices()]
    if name == "jax":
        import jax

        return [f"{d.platform}:{d.id}" for d in jax.devices()]
    if name == "torch":
        import torch

        gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return gpus or ["cpu:0"]
    return [f"{name}:unknown"]


def gpus(devices: list[str]) -> list[str]:
    return [d for d in devices if d.split(":")[0].lower() in ("gpu", "cuda", "rocm")]


def gpu_details() -> list[Gpu]:
    """Name and compute capability of each GPU the active backend sees (for the precision decision)."""
    name = backend()
    try:
        if name == "tensorflow":
            import tensorflow as tf

            found = []
            for gpu in tf.config.list_physical_devices("GPU"):
                details = tf.config.experimental.get_device_details(gpu)
                found.append(Gpu(details.get("device_name", gpu.name), details.get("compute_capability")))
            return found
        if name == "jax":
            import jax

            return [
                Gpu(d.device_kind, _capability(getattr(d, "compute_capability", None)))
                for d in jax.devices()
                if d.platform == "gpu"
            ]
        if name == "torch":
            import torch

            return [
                Gpu(torch.cuda.get_device_name(i), tuple(torch.cuda.get_device_capability(i)))
                for i in range(torch.cuda.device_count())
            ]
    except (RuntimeError, ValueError, AttributeError):
        pass  # a backend that cannot describe its GPU: the decision then assumes none is special
    return []


def _capability(text: str | None) -> tuple[int, int] | None:
    """JAX spells it ``"9.0"``."""
    try:
        major, minor = str(text).split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def describe() -> dict[str, Any]:
    """What the run log and the run metadata record about where training ran."""
    devices = visible_devices()
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "keras_backend": backend(),
        "devices": devices,
        "gpus": gpus(devices),
    }


def require_gpu(info: dict[str, Any], what: str) -> None:
    """Raise :class:`DeviceError` at once when ``what`` requires a GPU and none is visible."""
    if not info["gpus"]:
        raise DeviceError(
            f"{what}: a GPU is required (require_gpu: true) but the {info['keras_backend']} backend on "
            f"{info['host']} sees only {', '.join(info['devices']) or 'no devices'}. Run on a GPU host, "
            "or set require_gpu: false in params.yaml."
        )


CPU_ONLY_NOTE = (
    "note: no GPU is usable here ({devices}). params.yaml's defaults -- full-size AlexNet for 30 epochs and "
    "VGG16 -- are sized for a GPU and take many hours on a CPU; `make quick` runs the quick CPU setting "
    "(configs/quick-cpu.yaml) instead. Going on with what was asked."
)


def main() -> None:
    """``python -m tasks.devices``: what training would run on here, and a note when that is only a CPU."""
    info = describe()
    print(f"training devices: keras backend {info['keras_backend']}: {', '.join(info['devices'])}")
    if not info["gpus"]:
        print(CPU_ONLY_NOTE.format(devices=", ".join(info["devices"])), file=sys.stderr)


if __name__ == "__main__":
    main()
