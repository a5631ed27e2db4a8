"""Where a flow run executes and what accelerators it has: the report the flow logs first, and the
``require_gpu`` check, judged by the training stages' own device rule (:mod:`tasks.core.devices`). No
Prefect here."""

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

import psutil

from tasks.core import devices

#: The repository root: the probe imports ``tasks`` from here, whatever the flow's working directory.
ROOT = Path(__file__).resolve().parent.parent
#: The backend probe, run in a child process with this interpreter so the flow judges the GPU by the
#: same rule as the training stage it is about to run; it prints one JSON line.
_PROBE = ["-m", "tasks.core.devices", "--json"]


class GPUUnavailable(RuntimeError):
    """``require_gpu`` is set and no GPU is usable here."""


def nvidia_gpus() -> tuple[list[str], str]:
    """GPUs the NVIDIA driver lists (``index: name, memory, driver``) and a note on how it went."""
    if (exe := shutil.which("nvidia-smi")) is None:
        return [], "nvidia-smi not found"
    query = ["--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader"]
    try:
        out = subprocess.run([exe, *query], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return [], f"nvidia-smi failed: {exc}"
    rows = [[p.strip() for p in row.split(",")] for row in out.strip().splitlines()]
    gpus = [f"{r[0]}: {r[1]}, {r[2]}, driver {r[3]}" for r in rows if len(r) == 4]
    return gpus, f"{len(gpus)} GPU(s)"


def backend_devices(timeout: float = 120) -> dict[str, Any]:
    """``{"backend", "keras", "devices", "gpus"}`` as the Keras backend sees them, or ``{"error": ...}``."""
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", **os.environ}
    try:
        proc = subprocess.run(
            [sys.executable, *_PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"backend probe timed out after {timeout:.0f} s"}
    last = proc.stdout.strip().splitlines()[-1:]
    if proc.returncode != 0 or not last:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"backend probe exited with {proc.returncode}: {tail}"}
    return json.loads(last[0])


def describe(require_gpu: bool) -> dict[str, Any]:
    """The host report; raises :class:`GPUUnavailable` for ``require_gpu`` where the backend sees no
    GPU. The backend is asked only when it matters (a child process that imports Keras is slow)."""
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
    }
    info["nvidia_gpus"], info["nvidia_smi"] = nvidia_gpus()
    if require_gpu or info["nvidia_gpus"]:
        info["backend"] = backend_devices()
    else:
        info["backend"] = {"skipped": "no GPU reported by nvidia-smi and require_gpu is off"}
    info["gpus"] = devices.gpus(info["backend"].get("devices", []))
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
