"""The flow's DVC plumbing without Prefect: stage order, failure classification, outcomes,
retry condition, ``-S`` override checks, the artifact markdown, the host report (and its agreement with
the training stages' device check)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from flows import host, summary
from flows.pipeline import retry_options
from flows.stages import (
    DeterministicFailure,
    TransientFailure,
    classify,
    outcomes,
    retry_unless_deterministic,
    run_dvc,
    stage_order,
    uncached_outputs,
    up_to_date,
)
from tasks.core import devices
from tasks.core.errors import DeviceError
from tests.conftest import init_git_dvc, run


def test_stage_order_and_upstream_come_from_dvc(tmp_path: Path) -> None:
    """A stage added to dvc.yaml joins the order, foreach stages included; nothing is hard-coded."""
    init_git_dvc(tmp_path)
    stages = {
        "join": {"cmd": "cat x.txt y.txt > j.txt", "deps": ["x.txt", "y.txt"], "outs": ["j.txt"]},
        "make": {"cmd": "echo a > a.txt", "outs": ["a.txt"]},
        "fan": {
            "foreach": ["x", "y"],
            "do": {"cmd": "cp a.txt ${item}.txt", "deps": ["a.txt"], "outs": ["${item}.txt"]},
        },
        "alone": {"cmd": "echo b > b.txt", "outs": ["b.txt"]},
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    assert stage_order(tmp_path, ["join"]) == ["make", "fan@x", "fan@y", "join"]  # upstream first
    assert stage_order(tmp_path, ["fan@y", "alone"]) == ["make", "fan@y", "alone"]
    assert set(stage_order(tmp_path)) == {"make", "fan@x", "fan@y", "join", "alone"}
    with pytest.raises(DeterministicFailure, match="unknown stage.*'jion'.*the pipeline has: .*make"):
        stage_order(tmp_path, ["jion"])


def test_up_to_date_is_the_unchanged_head_of_the_order_as_dvc_status_sees_it(tmp_path: Path) -> None:
    """Only stages before the first one DVC would run: a stage after it may be unchanged now and still
    change once the stages before it have run."""
    init_git_dvc(tmp_path)
    stages = {
        "make": {"cmd": "echo a > a.txt", "outs": ["a.txt"]},
        "copy": {"cmd": "cp a.txt c.txt", "deps": ["a.txt"], "outs": ["c.txt"]},
        "join": {"cmd": "cat c.txt > j.txt", "deps": ["c.txt"], "outs": ["j.txt"]},
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    for name in ("a", "c", "j"):
        (tmp_path / f"{name}.txt").write_text("a\n")
    run([sys.executable, "-m", "dvc", "commit", "--force", "--quiet"], cwd=tmp_path)  # as if each had run
    order = ["make", "copy", "join"]
    assert up_to_date(tmp_path, order) == set(order)
    (tmp_path / "j.txt").write_text("changed by hand\n")
    assert up_to_date(tmp_path, order) == {"make", "copy"}
    (tmp_path / "j.txt").write_text("a\n")
    (tmp_path / "a.txt").write_text("changed by hand\n")
    status = json.loads(run([sys.executable, "-m", "dvc", "status", "--json"], cwd=tmp_path).stdout)
    assert set(status) == {"make", "copy"}  # join's own inputs change only once copy has run
    assert up_to_date(tmp_path, order) == set()
    (tmp_path / "dvc.yaml").write_text("stages: [")
    assert up_to_date(tmp_path, order) == set()  # no status to read: every stage asks DVC itself


def test_project_pipeline_starts_with_the_data_stages() -> None:
    assert stage_order(Path(__file__).resolve().parents[2], ["validate"]) == ["download", "preprocess", "validate"]


DVC_FAILED = "ERROR: failed to reproduce 'validate': failed to run: python -m tasks.validate, exited with {code}"


@pytest.mark.parametrize(
    ("lines", "kind"),
    [
        (
            ["error: validation failed: constant_images (test[3], test[4])", DVC_FAILED.format(code=2)],
            DeterministicFailure,
        ),
        (
            ["error: params.yaml: 'data.val_fraction' must be a finite number", DVC_FAILED.format(code=2)],
            DeterministicFailure,
        ),
        # the download gave up after its own retries (its one retry layer): final, whatever the message says
        (
            ["error: http://x/a.tgz: giving up after 5 attempts: HTTP 503 try later", DVC_FAILED.format(code=2)],
            DeterministicFailure,
        ),
        # a full disk may be cleared meanwhile (the stage exits 75); a denied permission or a damaged input
        # stays as it is
        (
            [
                "error: disk full, writing models/alexnet.keras: [Errno 28] No space left on device",
                DVC_FAILED.format(code=75),
            ],
            TransientFailure,
        ),
        (
            [
                "error: permission denied, writing models/alexnet.keras: [Errno 13] Permission denied",
                DVC_FAILED.format(code=2),
            ],
            DeterministicFailure,
        ),
        (
            [
                "error: damaged or not the right kind of file, reading data/prepared/train.npz (the prepared train "
                "split): BadZipFile: File is not a zip file",
                DVC_FAILED.format(code=2),
            ],
            DeterministicFailure,
        ),
        (["Killed", DVC_FAILED.format(code=-9)], TransientFailure),  # OOM killer, a crash
        (["Traceback (most recent call last):", "MemoryError", DVC_FAILED.format(code=1)], TransientFailure),
        ([DVC_FAILED.format(code=2)], TransientFailure),  # exit 2 without the stage's own message: not ours
        (["ERROR: Unable to acquire lock. Most likely another DVC process is running"], TransientFailure),
        (["error: asks for another try", DVC_FAILED.format(code=75)], TransientFailure),
    ],
)
def test_classify(lines: list[str], kind: type) -> None:
    failure = classify("stage 'validate'", lines)
    assert type(failure) is kind
    assert failure.retryable is (kind is TransientFailure)
    if failure.errors:
        assert failure.errors[0] in str(failure)


def test_deterministic_message_says_why_and_that_it_is_final() -> None:
    failure = classify("stage 'validate'", ["error: validation failed: constant_images", DVC_FAILED.format(code=2)])
    assert str(failure) == (
        "stage 'validate' failed (the stage exited with 2; not retried): error: validation failed: constant_images"
    )


def test_outcomes_read_dvc_lock_and_the_run_cache_line() -> None:
    before = {"download": {"outs": [{"md5": "a"}]}, "preprocess": {"outs": [{"md5": "b"}]}}
    after = {**before, "preprocess": {"outs": [{"md5": "c"}]}, "validate": {"outs": [{"md5": "d"}]}}
    lines = ["Stage 'preprocess' is cached - skipping run, checking out outputs", "Running stage 'validate':"]
    found = outcomes(before, after, ["download", "preprocess", "validate"], lines)
    assert found == {"download": "skipped", "preprocess": "restored", "validate": "ran"}
    # An output changed by hand and put back from the run-cache: dvc.lock ends as it was, yet DVC did restore it.
    restored = ["Stage 'download' is cached - skipping run, checking out outputs"]
    assert outcomes(before, before, ["download"], restored) == {"download": "restored"}


def test_uncached_outputs_are_the_lock_outs_git_does_not_ignore(tmp_path: Path) -> None:
    run(["git", "init", "-q"], cwd=tmp_path)
    (tmp_path / ".gitignore").write_text("/model.bin\n")
    for name in ("model.bin", "metrics.json"):
        (tmp_path / name).write_text("{}")
    lock = {"stages": {"train": {"outs": [{"path": "model.bin"}, {"path": "metrics.json"}, {"path": "gone.json"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert uncached_outputs(tmp_path) == ["metrics.json"]


class _State:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def result(self, raise_on_failure: bool = True) -> BaseException:
        return self.exc


def test_only_a_deterministic_failure_is_not_retried() -> None:
    final = DeterministicFailure("stage 'validate'", ["error: bad"])
    assert not retry_unless_deterministic(None, None, _State(final))
    assert retry_unless_deterministic(None, None, _State(TransientFailure("stage 'download'", [])))
    assert retry_unless_deterministic(None, None, None)
    options = retry_options(2, 30.0)
    assert options["retries"] == 2 and options["retry_delay_seconds"](2) == [30.0, 60.0]  # Prefect's backoff
    assert retry_options(-1, 30.0)["retries"] == 0


class Heard:
    """A logger that keeps each line with its level."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, line: str) -> None:
        self.lines.append(("info", line))

    def error(self, line: str) -> None:
        self.lines.append(("error", line))


def test_run_dvc_streams_lines_as_they_come_errors_at_error_level(tmp_path: Path) -> None:
    heard = Heard()
    result = run_dvc(["--version"], tmp_path, heard)
    assert result.returncode == 0 and heard.lines == [("info", line) for line in result.lines]
    assert result.lines[0][0].isdigit()
    with pytest.raises(TransientFailure, match="dvc status failed"):
        run_dvc(["status"], tmp_path, heard, what="dvc status")  # not a DVC repository
    assert heard.lines[-1][0] == "error" and heard.lines[-1][1].startswith("ERROR")


def test_metrics_table_absent_then_both_models(tmp_path: Path) -> None:
    assert "does not exist" in summary.metrics_table(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/evaluate.json").write_text(
        json.dumps(
            {
                "vgg16": {"test_accuracy": 0.7862, "test_loss": 0.71, "epochs": 10},
                "alexnet": {"test_accuracy": 0.7912, "test_loss": 0.65, "epochs": 19},
            }
        )
    )
    table = summary.metrics_table(tmp_path).splitlines()
    assert table[:2] == ["| metric | alexnet | vgg16 |", "| --- | ---: | ---: |"]
    assert table[2:] == ["| test_accuracy | 79.12 % | 78.62 % |", "| test_loss | 0.65 | 0.71 |", "| epochs | 19 | 10 |"]


def test_metrics_table_one_model_missing(tmp_path: Path) -> None:
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/evaluate.json").write_text(
        json.dumps({"alexnet": {"test_accuracy": 0.5, "per_class": {"cat": {"f1": 0.1}}}})
    )
    text = summary.metrics_table(tmp_path)
    assert "| test_accuracy | 50.00 % |" in text and "No metrics for vgg16" in text and "per_class" not in text


def test_render_links_the_report_when_present(tmp_path: Path) -> None:
    results = [{"stage": "validate", "outcome": "ran", "seconds": 4.2, "attempt": 1}]
    text = summary.pipeline_summary(tmp_path, results, "", experiment="small")
    assert "| validate | ran | 1 | 4.2 |" in text and "No metric differs" in text and "**small**" in text
    assert "does not exist yet" in text
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/report.html").write_text("<html></html>")
    assert (tmp_path / "reports/report.html").as_uri() in summary.pipeline_summary(tmp_path, results, "")


def test_host_report_is_cheap_without_require_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "nvidia_gpus", lambda: ([], "nvidia-smi not found"))
    monkeypatch.setattr(host, "backend_devices", lambda: pytest.fail("no backend probe without require_gpu"))
    info = host.describe(require_gpu=False)
    assert info["gpus"] == [] and info["cpu_count"] and "skipped" in info["backend"]


def test_require_gpu_trusts_the_backend_not_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "nvidia_gpus", lambda: (["0: NVIDIA H100, 81559 MiB, driver 550"], "1 GPU(s)"))
    monkeypatch.setattr(host, "backend_devices", lambda: {"backend": "tensorflow", "devices": ["CPU:0"]})
    with pytest.raises(host.GPUUnavailable, match="tensorflow backend sees only CPU:0"):
        host.describe(require_gpu=True)
    monkeypatch.setattr(host, "backend_devices", lambda: {"backend": "jax", "devices": ["cuda:0"]})
    assert host.describe(require_gpu=True)["gpus"] == ["cuda:0"]


def test_backend_probe_reports_errors_instead_of_raising(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "_PROBE", ["-c", "import sys; sys.exit('no keras here')"])
    assert "no keras here" in host.backend_devices()["error"]
    monkeypatch.setattr(host, "_PROBE", ["-c", 'print(\'{"backend": "torch", "devices": ["cpu:0"]}\')'])
    assert host.backend_devices() == {"backend": "torch", "devices": ["cpu:0"]}


def test_backend_probe_is_the_stages_device_check() -> None:
    """The real probe: a child process running tasks.core.devices, whatever the working directory."""
    seen = host.backend_devices()
    assert set(seen) == {"backend", "keras", "devices", "gpus"}, seen
    assert seen["devices"] and seen["gpus"] == devices.gpus(seen["devices"])


@pytest.mark.parametrize(
    ("backend", "seen"),
    [
        ("tensorflow", ["CPU:0"]),
        ("tensorflow", ["CPU:0", "GPU:0"]),
        ("tensorflow", ["CPU:0", "TPU:0"]),
        ("jax", ["cpu:0"]),
        ("jax", ["gpu:0", "gpu:1"]),
        ("jax", ["rocm:0"]),
        ("jax", ["METAL:0"]),
        ("torch", ["cpu:0"]),
        ("torch", ["cuda:0"]),
        ("torch", ["mps:0"]),
        ("numpy", ["numpy:unknown"]),
    ],
)
def test_flow_and_stage_agree_on_the_gpu(monkeypatch: pytest.MonkeyPatch, backend: str, seen: list[str]) -> None:
    """Given the same backend devices, the flow's host report (require_gpu=True) and a training
    stage's device check (tasks.core.devices) find the same GPUs, and pass or fail together."""
    monkeypatch.setattr(devices, "backend", lambda: backend)
    monkeypatch.setattr(devices, "visible_devices", lambda: list(seen))
    monkeypatch.setattr(host, "nvidia_gpus", lambda: ([], "nvidia-smi not found"))
    monkeypatch.setattr(host, "backend_devices", devices.report)  # what the child process prints

    stage = devices.describe()
    try:
        devices.require_gpu(stage, "train_alexnet")
        stage_ok = True
    except DeviceError:
        stage_ok = False
    try:
        flow_gpus = host.describe(require_gpu=True)["gpus"]
    except host.GPUUnavailable:
        flow_gpus = []
    assert flow_gpus == stage["gpus"]
    assert bool(flow_gpus) is stage_ok


def test_error_messages_keep_their_indented_details() -> None:
    lines = [
        "Running stage 'validate':",
        "error: data validation failed (2 expectation(s)); see reports/validation.html:",
        "  - constant_images: expected at most 5",
        "  - class_balance: off by 7 %",
        DVC_FAILED.format(code=2),
        "  an indented line that belongs to no error",
    ]
    failure = classify("stage 'validate'", lines)
    assert failure.errors == [
        "error: data validation failed (2 expectation(s)); see reports/validation.html: "
        "- constant_images: expected at most 5 - class_balance: off by 7 %"
    ]


def test_interrupting_run_dvc_stops_the_stage_too(tmp_path: Path) -> None:
    """Ctrl-C semantics: DVC ignores SIGINT while its stage runs, so the stage must get it as well."""
    import signal

    init_git_dvc(tmp_path)
    nap = f"sleep 60.{time.time_ns() % 10**6}"  # a command line no other process has
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {"stages": {"slow": {"cmd": f"echo started && {nap} && echo done > out.txt", "outs": ["out.txt"]}}}
        )
    )

    class Interrupted(Exception):
        pass

    class Logger(Heard):
        def info(self, line: str) -> None:
            if line == "started":
                raise Interrupted  # as a Prefect cancellation would interrupt the task mid-stream

    t0 = time.monotonic()
    with pytest.raises(Interrupted):
        run_dvc(["repro", "slow"], tmp_path, Logger())
    took = time.monotonic() - t0
    # The stage is gone the moment run_dvc returns (its 60 s nap did not run out).
    assert not (tmp_path / "out.txt").exists()
    assert not [p for p in psutil.process_iter(["cmdline"]) if nap in " ".join(p.info["cmdline"] or [])]
    print(f"stopped in {took:.1f} s; SIGINT here: {signal.getsignal(signal.SIGINT)}")


def test_workspace_file_lock_waits_for_a_live_holder_and_not_for_a_dead_one(tmp_path: Path) -> None:
    from flows.pipeline import workspace_lock

    (tmp_path / ".dvc/tmp").mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            f"h = open({str(tmp_path / '.dvc/tmp/prefect-flow.lock')!r}, 'a+')\n"
            "fcntl.flock(h, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    entered = threading.Event()

    def take() -> None:
        with workspace_lock(tmp_path, logging.getLogger(__name__)):
            entered.set()

    waiter = threading.Thread(target=take)
    waiter.start()
    assert not entered.wait(1.0), "a live holder keeps the workspace"
    holder.kill()  # SIGKILL: no cleanup runs in the holder
    holder.wait()
    assert entered.wait(10), "the OS released a dead holder's lock"
    waiter.join()
