"""Where a flow run runs: the host, its NVIDIA GPUs as the driver sees them, and the devices the
Keras backend that training will use can see.

Cheap on purpose: ``nvidia-smi`` takes milliseconds; the backend probe imports Keras and its
backend (a few seconds with TensorFlow), so it runs in a subprocess and only where a GPU matters:
when ``require_gpu`` is set or the driver reports a GPU. Which devices count as a GPU is not
decided here but in :mod:`tasks.core.devices`, the module the training stages use.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tasks.core import devices

#: The repository root: the child process imports ``tasks`` from here, whatever the flow's working directory.
ROOT = Path(__file__).resolve().parent.parent
#: The backend probe, run in a child process with this interpreter: the stages' own device check
#: (:func:`tasks.core.devices.report`), printed as one JSON line -- so the flow judges the GPU by the
#: same rule as the training stage it is about to run.
_PROBE = ["-m", "tasks.core.devices", "--json"]


class GPUUnavailable(RuntimeError):
    """``require_gpu`` is set and no GPU is usable here."""


def nvidia_gpus(timeout: float = 20) -> tuple[list[str], str]:
    """GPUs the NVIDIA driver lists (``index: name, memory, driver``) and a note on how it went."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], "nvidia-smi not found"
    try:
        proc = subprocess.run(
            [exe, "--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"nvidia-smi failed: {exc}"
    if proc.returncode != 0:
        return [], f"nvidia-smi exited with {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:200]}"
    gpus = []
    for row in proc.stdout.strip().splitlines():
        parts = [p.strip() for p in row.split(",")]
        if len(parts) == 4:
            gpus.append(f"{parts[0]}: {parts[1]}, {parts[2]}, driver {parts[3]}")
    return gpus, f"{len(gpus)} GPU(s)"


def backend_devices(timeout: float = 120) -> dict[str, Any]:
    """``{"backend", "keras", "devices", "gpus"}`` as the Keras backend sees them (:func:`tasks.core.devices.report`),
    or ``{"error": ...}``."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    try:
        proc = subprocess.run(
            [sys.executable, *_PROBE],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"backend probe timed out after {timeout:.0f} s"}
    last = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []
    if proc.returncode != 0 or not last:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"backend probe exited with {proc.returncode}: {tail}"}
    return json.loads(last[0])


def describe(require_gpu: bool) -> dict[str, Any]:
    """The host report the flow logs first; raises :class:`GPUUnavailable` for ``require_gpu``
    on a machine where neither the driver nor the backend shows a GPU."""
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover -- a project dependency
        pass
    info["nvidia_gpus"], info["nvidia_smi"] = nvidia_gpus()
    if require_gpu or info["nvidia_gpus"]:
        probe = backend_devices()
        info["backend"] = probe
        info["gpus"] = devices.gpus(probe.get("devices", []))
    else:
        info["backend"] = {"skipped": "no GPU reported by nvidia-smi and require_gpu is off"}
        info["gpus"] = []
    if require_gpu and not info["gpus"]:
        backend = info["backend"]
        seen = backend.get("error") or (
            f"the {backend.get('backend')} backend sees only {', '.join(backend.get('devices', [])) or 'no devices'}"
        )
        raise GPUUnavailable(
            f"require_gpu is set but {info['host']} has no usable GPU: {info['nvidia_smi']}; {seen}. "
            "Run this deployment on a GPU worker (prefect worker start --pool gpu on a GPU host), "
            "or pass require_gpu=false."
        )
    return info
