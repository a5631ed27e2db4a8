"""Which accelerators the active Keras backend sees, and a fail-fast check for ``require_gpu``.

The one place that decides whether a GPU is usable: the training stages ask it in-process
(:func:`describe`), and the flow's host report (flows/host.py) asks it in a child process
(:func:`report`, printed by ``python -m tasks.core.devices --json``), so a flow and the stage it runs
cannot disagree about the same backend's devices. Keras is imported only when a backend is
asked, so the flow can import the rule (:func:`gpus`) without paying for Keras.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
from importlib.metadata import version
from typing import Any

from tasks.core.errors import DeviceError
from tasks.core.precision import Gpu

#: Device kinds that count as an accelerator, as the backends name them (TensorFlow ``GPU``/``TPU``,
#: JAX ``gpu``/``rocm``/``tpu``/``METAL``, torch ``cuda``/``mps``): Keras trains on any of them.
GPU_KINDS = ("gpu", "cuda", "rocm", "mps", "metal", "tpu")


def backend() -> str:
    import keras  # here, not at the top: importing the rule (gpus) must not load a backend

    return keras.backend.backend()


def visible_devices() -> list[str]:
    """Device names as the active backend lists them, e.g. ``['CPU:0']``, ``['cuda:0', 'cuda:1']``
    or ``['mps:0']``."""
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf

        return [f"{d.device_type}:{d.name.rsplit(':', 1)[-1]}" for d in tf.config.list_physical_devices()]
    if name == "jax":
        import jax

        return [f"{d.platform}:{d.id}" for d in jax.devices()]
    if name == "torch":
        import torch

        found = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            found.append("mps:0")
        return found or ["cpu:0"]
    return [f"{name}:unknown"]


def gpus(devices: list[str]) -> list[str]:
    """The accelerators among ``devices`` (names as :func:`visible_devices` gives them): the one
    rule for "a GPU is usable", for the stages' ``require_gpu`` and the flow's host report alike."""
    return [d for d in devices if d.split(":")[0].lower() in GPU_KINDS]


def report() -> dict[str, Any]:
    """``{"backend", "keras", "devices", "gpus"}``: what the active backend sees and which of it
    is an accelerator; the flow's host report runs this in a child process."""
    devices = visible_devices()
    return {"backend": backend(), "keras": version("keras"), "devices": devices, "gpus": gpus(devices)}


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
    seen = report()
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "keras_backend": seen["backend"],
        "devices": seen["devices"],
        "gpus": seen["gpus"],
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
    "VGG16 -- are sized for a GPU and take many hours on a CPU: `make pipeline` runs the quick CPU setting "
    "(configs/quick-cpu.yaml) here, `make pipeline FULL=1` the defaults anyway."
)


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.core.devices``: what training would run on here, and a note when that is only a CPU.
    ``--json``: :func:`report` as one JSON line, for a caller in another process (the flow's host report).
    ``--has-gpu``: the devices line only, and exit status 1 when no GPU is usable (``make pipeline`` asks)."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--json"]:
        print(json.dumps(report()))
        return
    if args not in ([], ["--has-gpu"]):
        sys.exit("usage: python -m tasks.core.devices [--json | --has-gpu]")
    info = describe()
    print(f"training devices: keras backend {info['keras_backend']}: {', '.join(info['devices'])}")
    if args:
        sys.exit(0 if info["gpus"] else 1)
    if not info["gpus"]:
        print(CPU_ONLY_NOTE.format(devices=", ".join(info["devices"])), file=sys.stderr)


if __name__ == "__main__":
    main()
