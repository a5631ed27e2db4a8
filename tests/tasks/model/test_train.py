"""Training stages: learning-rate schedules and optimizers, learning, resuming after a kill, both backends,
and every refusal to start."""

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
from tasks.core.cli import run_stage
from tasks.core.params import AlexNetParams, parse
from tasks.core.precision import cpu_flags, decide
from tasks.model.checkpoints import Checkpoints
from tasks.model.epoch_log import read_history
from tasks.model.models import build_alexnet, load_model
from tasks.model import train
from tasks.model.train import EpochSchedule, compile_model, make_optimizer, one_hot
from tasks.model.whitening import whiten_first_conv
from tests.conftest import TINY_TRAINING, REPO, copy_of, finish, params_section, stage, subprocess_env

STEPS = 10


def lr(schedule: EpochSchedule, epoch: float) -> float:
    return float(keras.ops.convert_to_numpy(schedule(int(epoch * STEPS))))


def test_student_schedule_rises_tenfold_every_twenty_epochs() -> None:
    s = EpochSchedule("student", 1e-4, STEPS, 19)
    assert lr(s, 0) == pytest.approx(1e-4)
    assert lr(s, 0.9) == pytest.approx(1e-4), "constant within an epoch, as a per-epoch callback"
    assert lr(s, 10) == pytest.approx(1e-4 * 10**0.5, rel=1e-5)
    assert lr(s, 20) == pytest.approx(1e-3, rel=1e-5)


def test_onecycle_rises_to_peak_then_falls_to_zero() -> None:
    s = EpochSchedule("onecycle", 0.1, STEPS, 10, warmup_epochs=2)
    assert lr(s, 0) == pytest.approx(0.004)
    assert lr(s, 2) == pytest.approx(0.1)
    assert lr(s, 6) == pytest.approx(0.05)
    assert lr(s, 10) == pytest.approx(0.0, abs=1e-7)
    values = [lr(s, e / STEPS) for e in range(100)]
    assert int(np.argmax(values)) == 20


def test_cosine_with_warmup() -> None:
    s = EpochSchedule("cosine", 0.1, STEPS, 10, warmup_epochs=1)
    assert lr(s, 0) == pytest.approx(0.01)
    assert lr(s, 1) == pytest.approx(0.1)
    assert lr(s, 5.5) == pytest.approx(0.05, rel=1e-4)
    assert lr(s, 10) == pytest.approx(0.0, abs=1e-7)


def test_constant() -> None:
    s = EpochSchedule("constant", 0.3, STEPS, 5)
    assert [lr(s, e) for e in (0, 2, 4.5)] == pytest.approx([0.3] * 3)


def test_schedule_round_trips_through_config() -> None:
    s = EpochSchedule("onecycle", 0.1, STEPS, 10, warmup_epochs=2)
    again = EpochSchedule.from_config(s.get_config())
    assert lr(again, 3.3) == pytest.approx(lr(s, 3.3))


def test_optimizer_and_loss_follow_params() -> None:
    params = parse(
        AlexNetParams,
        params_section(
            "alexnet",
            epochs=3,
            batch_size=8,
            optimizer="sgd",
            learning_rate=0.05,
            momentum=0.9,
            nesterov=True,
            warmup_epochs=0,
            weight_decay=5e-4,
            label_smoothing=0.1,
        ),
    )
    opt = make_optimizer(params.recipe, STEPS)
    assert isinstance(opt, keras.optimizers.SGD) and opt.nesterov and opt.momentum == pytest.approx(0.9)
    assert opt.weight_decay == pytest.approx(5e-4)
    adam = make_optimizer(params.recipe.model_copy(update={"optimizer": "adam"}), STEPS)
    assert isinstance(adam, keras.optimizers.Adam)
    model = _tiny_model(0)
    compile_model(model, params.recipe, opt)
    assert model.loss.get_config()["label_smoothing"] == pytest.approx(0.1)


def _tiny_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(5, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))


@pytest.mark.parametrize("decay", [None, 0.0])
def test_ema_off_by_null_or_zero(decay: float | None) -> None:
    params = parse(AlexNetParams, params_section("alexnet", epochs=2, warmup_epochs=0, ema_decay=decay))
    assert not make_optimizer(params.recipe, STEPS).use_ema


def test_ema_decay_leaves_the_averaged_weights_in_the_model_after_fit(tmp_path) -> None:
    """With ``ema_decay`` the model ends ``fit`` on the exponential moving average of the weights
    it went through (checked against the average of the same run made without EMA), and that is
    what a saved model holds."""
    decay, steps = 0.8, 6
    params = parse(AlexNetParams,
        params_section(
            "alexnet", epochs=1, optimizer="sgd", momentum=0.0, nesterov=False, learning_rate=0.5,
            schedule="constant", warmup_epochs=0, weight_decay=0.0, ema_decay=decay,
        )
    )  # fmt: skip
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8 * steps, 6)).astype("float32"), np.eye(3, dtype="float32")[rng.integers(0, 3, 8 * steps)]

    class Trajectory(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.weights: list[list[np.ndarray]] = []

        def on_train_batch_end(self, batch: int, logs: object = None) -> None:
            self.weights.append([np.array(w) for w in self.model.get_weights()])

    plain, trajectory = _tiny_model(1), Trajectory()
    plain.compile(
        make_optimizer(params.recipe.model_copy(update={"ema_decay": None}), steps),
        "categorical_crossentropy",
    )
    plain.fit(x, y, batch_size=8, shuffle=False, verbose=0, callbacks=[trajectory])
    average = trajectory.weights[0]  # Keras' average starts at the first step's weights
    for step in trajectory.weights[1:]:
        average = [decay * a + (1 - decay) * w for a, w in zip(average, step)]

    averaged = _tiny_model(1)
    averaged.compile(make_optimizer(params.recipe, steps), "categorical_crossentropy")
    averaged.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    for got, want in zip(averaged.get_weights(), average):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert max(np.abs(g - w).max() for g, w in zip(averaged.get_weights(), trajectory.weights[-1])) > 1e-3
    averaged.save(tmp_path / "m.keras")
    for got, want in zip(keras.saving.load_model(tmp_path / "m.keras").get_weights(), average):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


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
    history = model.fit(x, one_hot(y), batch_size=16, epochs=20, verbose=0)
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
    assert "epoch 1/2 [head]" in log and "epoch 2/2 [train]" in log  # from random weights
    assert json.loads((work / "dvclive/vgg16/metrics.json").read_text())["phase"] == "train"


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


def test_require_gpu_fails_fast_without_one(workspace: Path, tmp_path: Path) -> None:
    work = copy_of(workspace, tmp_path, train={"require_gpu": True})
    code, log = finish(stage("tasks.train_alexnet", work))
    assert code == 2
    assert "a GPU is required (require_gpu: true) but the tensorflow backend" in log and "sees only CPU:0" in log
    assert not (work / "checkpoints").exists() and not (work / "models").exists()


def test_a_models_own_require_gpu_overrides_the_shared_one(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``vgg16.require_gpu`` over ``train.require_gpu: false``; the stage runs in this process, whose
    backend is already loaded (the exit status and the one line are those of the process above)."""
    from tasks import train_vgg16

    work = copy_of(workspace, tmp_path, vgg16={"require_gpu": True})
    monkeypatch.chdir(work)
    with pytest.raises(SystemExit) as exited:
        run_stage(train_vgg16.main)
    assert exited.value.code == 2
    said = f"error: train_vgg16: a GPU is required (require_gpu: true) but the {keras.backend.backend()} backend"
    assert said in capsys.readouterr().err
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
    compile_phase = train.compile_model

    def watched(model: keras.Model, *args: object) -> None:  # conv1 as each phase starts
        kernels.append(keras.ops.convert_to_numpy(model.get_layer("conv1").kernel).copy())
        compile_phase(model, *args)

    monkeypatch.setattr(train, "compile_model", watched)
    # Two phases, so the resumed run compiles the loaded model too.
    lr = params.recipe.learning_rate
    two = [train.Phase("first", 1, lr), train.Phase("second", 1, lr)]
    checkpoints = Checkpoints(tmp_path, "alexnet")
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

    checkpoints = Checkpoints(tmp_path, "alexnet")  # opened afresh, as a resumed stage opens them
    model, state = train.start(build, params.recipe, train_split, checkpoints, "fingerprint")
    list(train.epochs("alexnet", model, state, two, params.recipe, train_split, val_split, checkpoints))
    assert state.epochs_done == 2 and state.resumed_from == [1]
    np.testing.assert_array_equal(kernels[1], after_first)
