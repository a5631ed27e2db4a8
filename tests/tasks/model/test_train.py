"""Training stages: learning, resuming after a kill, both backends, and every refusal to start."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from tasks.core.atomic import write_json
from tasks.core.params import AlexNetParams, parse
from tasks.core.precision import cpu_flags, decide
from tasks.model.epoch_log import read_history
from tasks.model.models import build_alexnet, load_model
from tasks.model import train
from tasks.model.train import one_hot
from tasks.model.whitening import whiten_first_conv
from tests.conftest import TINY_TRAINING, REPO, copy_of, finish, params_section, stage, subprocess_env


def test_alexnet_overfits_64_images() -> None:
    """The model and loss can drive the training loss to near zero: it can learn."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    y = np.arange(64) % 10
    params = parse(
        AlexNetParams,
        params_section(
            "alexnet",
            variant="seed",
            width=0.25,
            batch_norm=False,
            epochs=1,
            batch_size=16,
            optimizer="adam",
            learning_rate=1e-3,
            warmup_epochs=0,
            augmentation="none",
        ),
    )
    keras.utils.set_random_seed(0)
    model = build_alexnet(params, [127.5] * 3, [64.0] * 3)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.CategoricalCrossentropy(), metrics=["accuracy"])
    history = model.fit(x, one_hot(y), batch_size=16, epochs=40, verbose=0)
    assert history.history["loss"][-1] < 0.05
    assert history.history["accuracy"][-1] == 1.0


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_tiny_training_on_each_backend(workspace: Path, tmp_path: Path, backend: str) -> None:
    work = copy_of(workspace, tmp_path, alexnet={"jit_compile": backend == "jax"})  # unjitted JAX crawls
    code, log = finish(stage("tasks.train_alexnet", work, backend))
    assert code == 0, log
    assert f"backend {backend}" in log
    metrics = json.loads((work / "metrics/alexnet.json").read_text())
    assert metrics["epochs_run"] == 2 and 0.0 <= metrics["val_accuracy"] <= 1.0
    assert metrics["params"] > 0 and metrics["images_per_second"] > 0
    meta = json.loads((work / "models/alexnet.meta.json").read_text())
    assert meta["devices"]["keras_backend"] == backend and meta["params"]["width"] == 0.0625
    assert "keras" in meta["packages"] and meta["data_sha256"]["train"]["x"]
    # The ONNX export beside the model, on every backend (off TensorFlow, a TensorFlow child process converts it).
    assert (work / "models/alexnet.onnx").stat().st_size > 0
    # mixed_precision: auto decides from this machine's CPU flags (no GPU here) and says why.
    expected = decide("auto", [], cpu_flags())
    assert (meta["precision_policy"], meta["precision_reason"]) == (expected.policy, expected.reason)
    assert f"precision {expected.policy} ({expected.reason})" in log
    # The DVCLive log: a row per epoch in each per-number file, the latest epoch in its metrics.json.
    history = _history(work)
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"learning_rate", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"} <= set(history[0])
    latest = json.loads((work / "dvclive/alexnet/metrics.json").read_text())
    assert latest["step"] == 2 and latest["val_accuracy"] == history[-1]["val_accuracy"] == metrics["val_accuracy"]
    assert not (work / "dvclive/alexnet/report.html").exists() and not (work / "dvclive/alexnet/dvc.yaml").exists()
    assert not (work / "checkpoints/alexnet").exists(), "a finished run leaves no checkpoint behind"
    # Trained with crop_flip (pad + crop), the saved model still takes 32x32 images to predict.
    assert meta["params"]["augmentation"] == "crop_flip"
    model = load_model(work / "models/alexnet.keras")
    assert model.predict(np.zeros((3, 32, 32, 3), np.uint8), verbose=0).shape == (3, 10)


def test_vgg16_two_phases(workspace: Path, tmp_path: Path) -> None:
    work = copy_of(workspace, tmp_path, vgg16={"epochs": 2, "head_epochs": 1}, data={})
    code, log = finish(stage("tasks.train_vgg16", work))
    assert code == 0, log
    history = _history(work, "vgg16")
    assert [h["learning_rate"] for h in history] == pytest.approx([1e-3, 1e-4])
    assert "epoch 1/2 [head]" in log and "epoch 2/2 [fine_tune]" in log
    assert json.loads((work / "dvclive/vgg16/metrics.json").read_text())["phase"] == "fine_tune"


def _history(work: Path, model: str = "alexnet") -> list[dict[str, Any]]:
    return read_history(work / f"dvclive/{model}/plots/metrics")


def _logged_step(work: Path) -> int:
    """The last epoch in the running stage's DVCLive log (0 before the first, or while it is rewritten)."""
    try:
        return json.loads((work / "dvclive/alexnet/metrics.json").read_text())["step"]
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def test_killed_training_resumes_from_last_epoch(workspace: Path, tmp_path: Path) -> None:
    """SIGKILL after an epoch; the rerun continues from the checkpoint and matches an uninterrupted run.

    The DVCLive log is on disk while the stage runs, and the resumed stage continues it: every
    epoch in it exactly once."""
    settings = {"alexnet": {"width": 0.25, "epochs": 6, "augmentation": "none", "variant": "seed"}}
    reference = copy_of(workspace, tmp_path / "ref", **settings)
    code, log = finish(stage("tasks.train_alexnet", reference))
    assert code == 0, log

    work = copy_of(workspace, tmp_path / "killed", **settings)
    state = work / "checkpoints/alexnet/state.json"
    proc = stage("tasks.train_alexnet", work)
    deadline = time.monotonic() + 300
    # The log is written after the checkpoint, so two epochs logged means two checkpointed.
    while time.monotonic() < deadline and _logged_step(work) < 2:
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    done = json.loads(state.read_text())["epochs_done"]
    assert 2 <= done < 6 and not (work / "models/alexnet.keras").exists()
    assert [h["epoch"] for h in _history(work)] in ([*range(1, done + 1)], [*range(1, done)])

    code, log = finish(stage("tasks.train_alexnet", work))
    assert code == 0, log
    assert f"resuming from checkpoints/alexnet after epoch {done}" in log
    assert f"epoch {done}/6" not in log, "finished epochs are not trained again"
    meta = json.loads((work / "models/alexnet.meta.json").read_text())
    assert meta["resumed_from_epochs"] == [done]
    resumed, uninterrupted = _history(work), _history(reference)
    assert [h["epoch"] for h in resumed] == [*range(1, 7)]
    for a, b in zip(resumed, uninterrupted):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3, abs=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3, abs=1e-4)
    for name in ("train_loss", "val_accuracy", "learning_rate"):
        steps = (work / f"dvclive/alexnet/plots/metrics/{name}.tsv").read_text().split()[2::2]
        assert steps == [str(e) for e in range(1, 7)], f"{name}.tsv: each epoch once, in order"


@pytest.mark.parametrize(
    ("section", "changes", "message"),
    [
        ("alexnet", {"optimizer": "rmsprop"}, "'alexnet.optimizer' must be one of adam, adamw, sgd; got 'rmsprop'"),
        ("alexnet", {"epochs": -3}, "'alexnet.epochs' must be >= 1, got -3"),
        ("alexnet", {"variant": "resnet"}, "'alexnet.variant' must be one of seed, paper"),
        (
            "vgg16",
            {"weights": "missing/vgg16_notop.h5"},
            "'vgg16.weights' is neither 'imagenet', 'none' nor an existing weights file: missing/vgg16_notop.h5",
        ),
        ("vgg16", {"head_epochs": 5, "epochs": 2}, "'vgg16.head_epochs' (5) cannot exceed vgg16.epochs (2)"),
        (
            "alexnet",
            {"mixed_precision": "yes"},
            "'alexnet.mixed_precision' must be one of true, false, auto; got 'yes'",
        ),
    ],
)
def test_bad_params_fail_before_any_work(
    workspace: Path, tmp_path: Path, section: str, changes: dict, message: str
) -> None:
    work = copy_of(workspace, tmp_path, **{section: changes})
    code, log = finish(stage(f"tasks.train_{section}", work))
    assert code == 2 and message in log and "Traceback" not in log
    assert not (work / "models").exists() and not (work / "checkpoints").exists()


def test_refuses_data_that_failed_validation(workspace: Path, tmp_path: Path) -> None:
    work = copy_of(workspace, tmp_path)
    report = json.loads((work / "reports/validation.json").read_text())
    write_json(work / "reports/validation.json", {**report, "success": False, "failed": ["no_test_leakage"]})
    code, log = finish(stage("tasks.train_alexnet", work))
    assert code == 2 and "failed validation (no_test_leakage); refusing to train" in log
    (work / "reports/validation.json").unlink()
    code, log = finish(stage("tasks.train_alexnet", work))
    assert code == 2 and "run the validate stage first" in log
    assert not (work / "models").exists()


@pytest.mark.parametrize(
    ("changes", "module"),
    [
        ({"train": {"require_gpu": True}}, "tasks.train_alexnet"),
        ({"vgg16": {"require_gpu": True}}, "tasks.train_vgg16"),
    ],
)
def test_require_gpu_fails_fast_without_one(workspace: Path, tmp_path: Path, changes: dict, module: str) -> None:
    work = copy_of(workspace, tmp_path, **changes)
    code, log = finish(stage(module, work))
    assert code == 2
    assert "a GPU is required (require_gpu: true) but the tensorflow backend" in log and "sees only CPU:0" in log
    assert not (work / "checkpoints").exists() and not (work / "models").exists()


def test_vgg16_imagenet_weights_unreachable_is_one_retryable_line(workspace: Path, tmp_path: Path) -> None:
    # Nothing serves the weights: every HTTPS request goes to a closed port on 127.0.0.1, and the
    # Keras cache is empty.
    work = copy_of(workspace, tmp_path, vgg16={"weights": "imagenet", "width": 1.0})  # pretrained: full width
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    env = subprocess_env() | {
        "PYTHONPATH": str(REPO),
        "KERAS_HOME": str(tmp_path / "keras"),
        "https_proxy": f"http://127.0.0.1:{port}",
        "HTTPS_PROXY": f"http://127.0.0.1:{port}",
        "no_proxy": "",
        "NO_PROXY": "",
    }
    done = subprocess.run(
        [sys.executable, "-m", "tasks.train_vgg16"], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 75, done.stderr  # EX_TEMPFAIL: the flow retries it, the network may come back
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in errors[0]
    assert "'none'" in errors[0] and "local copy" in errors[0]
    assert not (work / "models").exists()


def test_whiten_conv1_starts_training_from_the_whitening_and_a_resumed_run_keeps_its_weights(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``whiten_conv1``: the first epoch starts from :func:`whiten_first_conv` of the train split, the
    epoch trains conv1 on from there, and a run resumed from the checkpoint goes on from the trained
    kernel (whitening it again would put back the start, which here does not depend on the random init)."""
    train_split, val_split, facts = train.load_data(workspace / "data/prepared")
    section = params_section("alexnet", **TINY_TRAINING["alexnet"]) | {"batch_norm": False, "whiten_conv1": True}
    params = parse(AlexNetParams, section)

    def build() -> keras.Model:
        return build_alexnet(params, facts["train_channel_mean"], facts["train_channel_std"])

    kernels: list[np.ndarray] = []
    prepare = train.prepare

    def watched(model: keras.Model, *args: object) -> None:  # conv1 as each phase starts
        kernels.append(keras.ops.convert_to_numpy(model.get_layer("conv1").kernel).copy())
        prepare(model, *args)

    monkeypatch.setattr(train, "prepare", watched)
    # Two phases, so the resumed run prepares the loaded model too.
    lr = params.recipe.learning_rate
    two = [train.Phase("first", 1, lr), train.Phase("second", 1, lr)]
    checkpoints = train.Checkpoints(tmp_path, "alexnet")
    model, state = train.start(build, params.recipe, train_split, checkpoints, "fingerprint")
    next(train.epochs("alexnet", model, state, two, params.recipe, train_split, val_split, checkpoints))
    assert state.epochs_done == 1 and math.isfinite(state.history[0]["train_loss"])
    after_first = keras.ops.convert_to_numpy(model.get_layer("conv1").kernel)

    keras.utils.set_random_seed(params.recipe.seed)
    default, expected = build(), build()
    whiten_first_conv(expected, train_split.x, seed=params.recipe.seed)
    np.testing.assert_array_equal(kernels[0], keras.ops.convert_to_numpy(expected.get_layer("conv1").kernel))
    assert not np.allclose(kernels[0], keras.ops.convert_to_numpy(default.get_layer("conv1").kernel))
    assert not np.allclose(after_first, kernels[0]), "conv1 trains"

    args = (params.recipe, train_split, val_split, checkpoints, "fingerprint")
    model, state = train.fit("alexnet", build, two, *args)
    assert state.epochs_done == 2 and state.resumed_from == [1]
    np.testing.assert_array_equal(kernels[1], after_first)
