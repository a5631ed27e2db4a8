"""What the backends report on a host without a GPU, the note ``make pipeline`` prints there, and the JSON
the flow's host report reads (one rule for both: tests/flows/test_stages.py checks they agree)."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import pytest

from tasks.core import devices
from tests.conftest import REPO, subprocess_env


def _python(code: list[str], backend: str = "tensorflow") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env() | {"KERAS_BACKEND": backend, "PYTHONPATH": str(REPO)},
    )


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_no_gpu_details_on_a_cpu_only_host(backend: str) -> None:
    if backend == keras.backend.backend():  # this process's own: asked here, not in a new interpreter
        assert devices.gpu_details() == []
        return
    out = _python(["-c", "from tasks.core.devices import gpu_details; print(gpu_details())"], backend)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_cpu_only_host_is_told_the_defaults_are_sized_for_a_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    devices.main([])  # python -m tasks.core.devices
    out = capsys.readouterr()
    assert out.out.lower().startswith(f"training devices: keras backend {keras.backend.backend()}: cpu:0")
    assert "sized for a GPU" in out.err and "make pipeline FULL=1" in out.err
    with pytest.raises(SystemExit) as asked:
        devices.main(["--has-gpu"])  # what `make pipeline` asks
    out = capsys.readouterr()
    assert asked.value.code == 1 and out.out.startswith("training devices: ") and not out.err, out


def test_json_report_is_what_the_flow_reads() -> None:
    """``--json`` is the flow's host probe (flows/host.py): the backend, its devices and which are GPUs."""
    out = _python(["-m", "tasks.core.devices", "--json"], "jax")
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["backend"] == "jax" and seen["devices"] == ["cpu:0"] and seen["gpus"] == []
