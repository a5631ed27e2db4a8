"""The training loop both training stages share: resumable, epoch-checkpointed, backend-agnostic.

From a model section of params.yaml to the optimizer: the stage's ``main`` loads the section
(:func:`tasks.core.params.load`) and names its phases, :func:`run` sets up devices, data and
checkpoints, :func:`epochs` is the loop, and each phase compiles a fresh optimizer from
:func:`make_optimizer` on its :class:`EpochSchedule`.

One ``model.fit`` call per epoch over a permutation seeded by (seed, epoch), so a run resumed
from a checkpoint sees exactly the batches an uninterrupted run would. After every epoch the
whole model is saved to ``checkpoints/<model>/`` (:mod:`tasks.model.checkpoints`; outside DVC's
outs, which DVC wipes before rerunning a stage) and the epoch goes to the DVCLive log
``dvclive/<model>/`` (:mod:`tasks.model.epoch_log`), which DVC reads while the stage runs. A killed
or retried stage picks up after the last finished epoch and continues the same log. The stage's
outputs -- model, metadata, metrics -- are replaced together once training has succeeded, and the
previous run's training log is kept until then (put back if the run fails).

Decisions (early stopping, the best epoch) use the validation split only; the test split is
read by the evaluate stage alone.

Hand-written over Keras' ``BackupAndRestore`` callback, which resumes a single ``fit`` call: this
loop spans one ``fit`` per epoch and a recompile when VGG16 unfreezes, and its checkpoint also
carries the best epoch so far and the history.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tasks.core import devices, precision, runinfo
from tasks.core.atomic import atomic_path, together, write_json
from tasks.core.errors import StageError, reading
from tasks.core.params import Recipe
from tasks.core.paths import PREPARED, Outputs, outputs_for
from tasks.data.splits import NUM_CLASSES, Split, load_split
from tasks.model import export
from tasks.model.checkpoints import Checkpoints, State
from tasks.model.epoch_log import EpochLog
from tasks.model.feed import feed
from tasks.model.layers import PACKAGE
from tasks.model.models import for_inference, set_vgg_trainable
from tasks.model.progress import EpochProgress
from tasks.model.whitening import whiten_first_conv

log = logging.getLogger(__name__)


#: :attr:`Phase.base` for VGG16's head phase: the convolutional base frozen.
FROZEN = "frozen"


@dataclass(frozen=True)
class Phase:
    """A run of epochs with one optimizer, whose schedule peaks at ``learning_rate`` and spans the phase."""

    name: str
    epochs: int
    learning_rate: float
    #: VGG16's convolutional base: :data:`FROZEN`, or the block it trains from; None leaves the layers as built
    base: str | None = None


def load_data(folder: Path = PREPARED) -> tuple[Split, Split, dict[str, Any]]:
    with reading(folder / "facts.json", "the prepared data's facts"):
        facts = json.loads((folder / "facts.json").read_text())
    return load_split("train", folder), load_split("val", folder), facts


# --------------------------------------------------------------------------- the recipe as Keras objects


@keras.saving.register_keras_serializable(package=PACKAGE)
class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate as a function of the (fractional) epoch, per optimizer step and written in
    ``keras.ops``: it runs on every backend and resumes exactly (the step counter is saved with the model).

    * ``constant``: ``peak`` throughout (after the optional linear warmup).
    * ``student``: ``peak * 10 ** (floor(epoch) / 20)`` -- the student notebook's schedule, which rises.
    * ``cosine``: linear warmup for ``warmup_epochs``, then cosine decay to zero at ``epochs``.
    * ``onecycle``: linear rise from ``peak / 25`` to ``peak`` over ``warmup_epochs``, then linear
      decay to zero at ``epochs`` (the one-cycle policy as used by fast CIFAR recipes).
    """

    def __init__(self, kind: str, peak: float, steps_per_epoch: int, epochs: int, warmup_epochs: float = 0.0):
        self.kind, self.peak, self.steps_per_epoch = kind, peak, steps_per_epoch
        self.epochs, self.warmup_epochs = epochs, warmup_epochs

    def __call__(self, step: Any) -> Any:
        ops = keras.ops
        epoch = ops.cast(step, "float32") / float(self.steps_per_epoch)
        total = float(max(self.epochs, 1))
        warm = float(self.warmup_epochs)
        if self.kind == "student":
            return self.peak * ops.power(10.0, ops.floor(epoch) / 20.0)
        if self.kind == "onecycle":
            start = self.peak / 25.0
            rise = start + (self.peak - start) * epoch / max(warm, 1e-8)
            fall = self.peak * ops.maximum(0.0, (total - epoch) / max(total - warm, 1e-8))
            return ops.where(epoch < warm, rise, fall)
        ramp = ops.minimum(1.0, (epoch + 1.0 / self.steps_per_epoch) / warm) if warm > 0 else 1.0
        if self.kind == "cosine":
            progress = ops.clip((epoch - warm) / max(total - warm, 1e-8), 0.0, 1.0)
            return ramp * self.peak * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return ramp * self.peak + ops.zeros_like(epoch)

    def get_config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "peak": self.peak,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "warmup_epochs": self.warmup_epochs,
        }


def make_optimizer(recipe: Recipe, steps_per_epoch: int, phase: Phase | None = None) -> keras.optimizers.Optimizer:
    """The optimizer of ``recipe.optimizer`` on its :class:`EpochSchedule`: ``recipe.schedule`` peaking at
    ``phase.learning_rate`` over ``phase.epochs`` (without a phase, the recipe's own); with ``ema_decay`` it
    also keeps an exponential moving average of the weights (Keras' ``use_ema``).

    Keras swaps the average into the model at the end of every ``fit`` call
    (``finalize_variable_values``), and the training loop runs one ``fit`` per epoch: so each epoch
    ends on the averaged weights -- validation, the best-epoch checkpoint and the saved model all
    see them -- and the next epoch trains on from there (an epoch-long lookahead).
    """
    phase = phase or Phase("train", recipe.epochs, recipe.learning_rate)
    schedule = EpochSchedule(recipe.schedule, phase.learning_rate, steps_per_epoch, phase.epochs, recipe.warmup_epochs)
    decay = recipe.weight_decay or None
    ema: dict[str, Any] = {"use_ema": True, "ema_momentum": recipe.ema_decay} if recipe.ema_decay else {}
    if recipe.optimizer == "sgd":
        return keras.optimizers.SGD(
            schedule, momentum=recipe.momentum, nesterov=recipe.nesterov, weight_decay=decay, **ema
        )
    if recipe.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=recipe.weight_decay, **ema)
    return keras.optimizers.Adam(schedule, weight_decay=decay, **ema)


def compile_model(model: keras.Model, recipe: Recipe, optimizer: keras.optimizers.Optimizer) -> None:
    """Cross-entropy on one-hot labels (label smoothing needs them one-hot), accuracy, the recipe's XLA choice."""
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], jit_compile=recipe.jit_compile)


def set_precision(recipe: Recipe, info: dict[str, Any]) -> precision.Decision:
    """Set the global dtype policy ``mixed_precision`` asks for on this hardware (tasks.core.precision)."""
    choice = precision.decide(
        recipe.mixed_precision, devices.gpu_details() if info["gpus"] else [], precision.cpu_flags()
    )
    keras.mixed_precision.set_global_policy(choice.policy)
    log.info("precision %s (%s)", choice.policy, choice.reason)
    return choice


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(NUM_CLASSES, dtype="float32")[labels.astype(np.int64)]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))


# --------------------------------------------------------------------------- the loop


def start(
    build: Callable[[], keras.Model], recipe: Recipe, train: Split, checkpoints: Checkpoints, fingerprint: str
) -> tuple[keras.Model, State]:
    """The checkpoint's model and state where they match ``fingerprint``; else a fresh model from ``build``
    (with ``recipe.whiten_conv1``, its first convolution set from the patches of ``train``:
    :mod:`tasks.model.whitening`) and a fresh state."""
    model, state = checkpoints.load(fingerprint)
    if model is None:
        keras.utils.set_random_seed(recipe.seed)
        model = build()
        if recipe.whiten_conv1:  # a fresh model only: a resumed one goes on from its checkpoint's weights
            whiten_first_conv(model, train.x, seed=recipe.seed)
    return model, state


def epochs(
    name: str,
    model: keras.Model,
    state: State,
    phases: list[Phase],
    recipe: Recipe,
    train: Split,
    val: Split,
    checkpoints: Checkpoints,
) -> Iterator[dict[str, Any]]:
    """Train ``model`` on from ``state`` through ``phases``; yield each finished epoch's record once its
    checkpoint is written. Ends at the last epoch or when early stopping says so."""
    total, steps = sum(p.epochs for p in phases), steps_per_epoch(len(train.y), recipe.batch_size)
    y_train, y_val = one_hot(train.y), one_hot(val.y)
    first = state.epochs_done
    for epoch in range(first, total):
        if _stop_early(state, recipe.early_stopping_patience, epoch):
            checkpoints.save_state(state)
            return
        phase = phase_at(phases, epoch)
        if state.phase != phase.name:  # a new phase: the layers it trains, a fresh optimizer over its epochs
            if phase.base is not None:
                set_vgg_trainable(model, None if phase.base == FROZEN else phase.base)
            compile_model(model, recipe, make_optimizer(recipe, steps, phase))
            state.phase = phase.name
        order = np.random.default_rng([recipe.seed, epoch]).permutation(len(train.y))
        lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        label, left = f"{name} epoch {epoch + 1}/{total}", total - first if epoch == first else None
        started = time.perf_counter()
        fitted = model.fit(
            **feed(train.x[order], y_train[order], recipe.batch_size),
            epochs=epoch + 1,
            initial_epoch=epoch,
            shuffle=False,
            verbose=0,
            callbacks=[EpochProgress(label, steps, recipe.batch_size, log, epochs_left=left)],
        )
        seconds = time.perf_counter() - started
        scores = model.evaluate(**feed(val.x, y_val, max(recipe.batch_size, 256)), verbose=0, return_dict=True)
        record = _record(epoch + 1, phase.name, lr, fitted.history, scores, seconds, len(train.y))
        checkpoints.save(model, state, is_best=state.add(record))
        log.info("%s %s", label, _summary(record))
        if not math.isfinite(record["train_loss"]):
            raise StageError(
                f"{name}: training diverged at epoch {epoch + 1} (loss {record['train_loss']}); "
                "lower the learning rate in params.yaml"
            )
        yield record


def restore_best(model: keras.Model, state: State, recipe: Recipe, checkpoints: Checkpoints) -> None:
    """With ``recipe.restore_best``, put the best epoch's weights back if a later epoch was the last."""
    if recipe.restore_best and state.best_epoch and state.best_epoch != state.epochs_done:
        best = (state.best_epoch, state.best_val_accuracy)
        log.info("restoring the weights of the best epoch (%d, val_accuracy %.4f)", *best)
        model.load_weights(checkpoints.best)


def phase_at(phases: list[Phase], epoch: int) -> Phase:
    end = 0
    for phase in phases:
        end += phase.epochs
        if epoch < end:
            return phase
    return phases[-1]


def _stop_early(state: State, patience: int | None, epoch: int) -> bool:
    """Whether training stops before ``epoch``: it did already, or ``patience`` epochs passed without a
    better validation accuracy (then the state says so)."""
    if not state.stopped_early and patience and state.best_epoch and epoch - state.best_epoch >= patience:
        log.info(
            "early stopping: no val_accuracy gain for %d epochs (best %.4f at epoch %d)",
            patience,
            state.best_val_accuracy,
            state.best_epoch,
        )
        state.stopped_early = True
    return state.stopped_early


def _record(
    epoch: int, phase: str, lr: float, history: dict[str, list[float]], scores: dict[str, float], seconds: float, n: int
) -> dict[str, Any]:
    """An epoch as the checkpoint, the training log and the metrics keep it."""
    return {
        "epoch": epoch,
        "phase": phase,
        "learning_rate": lr,
        "train_loss": float(history["loss"][-1]),
        "train_accuracy": float(history["accuracy"][-1]),
        "val_loss": float(scores["loss"]),
        "val_accuracy": float(scores["accuracy"]),
        "seconds": round(seconds, 3),
        "images_per_second": round(n / seconds, 1),
    }


def _summary(r: dict[str, Any]) -> str:
    return (
        f"[{r['phase']}] lr {r['learning_rate']:.2e}  loss {r['train_loss']:.4f} acc {r['train_accuracy']:.4f}  "
        f"val_loss {r['val_loss']:.4f} val_acc {r['val_accuracy']:.4f}  {r['seconds']:.1f} s  "
        f"{r['images_per_second']:.0f} img/s"
    )


# --------------------------------------------------------------------------- outputs


def metrics(model: keras.Model, state: State, n_train: int) -> dict[str, Any]:
    """The DVC metrics of a training run: final and best validation scores, speed, size."""
    history = state.history
    last = history[-1] if history else {}
    seconds = [h["seconds"] for h in history]
    return {
        "val_accuracy": last.get("val_accuracy"),
        "val_loss": last.get("val_loss"),
        "best_val_accuracy": state.best_val_accuracy if history else None,
        "best_val_loss": state.best_val_loss if history else None,
        "best_epoch": state.best_epoch,
        "epochs_run": len(history),
        "train_seconds": round(sum(seconds), 2),
        "seconds_per_epoch": round(float(np.mean(seconds)), 3) if seconds else None,
        "images_per_second": round(n_train * len(seconds) / sum(seconds), 1) if seconds else None,
        "params": int(model.count_params()),
    }


def write_outputs(
    out: Outputs, model: keras.Model, recipe: Recipe, state: State, meta: dict[str, Any], n_train: int
) -> None:
    # Save without the optimizer state: the model file is for inference and evaluation.
    compile_model(model, recipe, keras.optimizers.SGD())
    inference = for_inference(model, recipe.test_time_augmentation)
    if inference is not model:
        compile_model(inference, recipe, keras.optimizers.SGD())
    # All of them change together: a failure in any leaves the previous run's set as it was.
    with together():
        with atomic_path(out.model) as tmp:
            inference.save(tmp)
            export.export_saved(tmp, out.export, meta.get("class_names"))
        write_json(out.meta, {**meta, "finished": runinfo.now(), "resumed_from_epochs": state.resumed_from})
        write_json(out.metrics, metrics(model, state, n_train))


def run_metadata(
    name: str, params: Any, choice: precision.Decision, info: dict[str, Any], facts: dict[str, Any]
) -> dict[str, Any]:
    return {
        "model": name,
        "params": runinfo.as_dict(params),
        "precision_policy": choice.policy,
        "precision_reason": choice.reason,
        "devices": info,
        "packages": runinfo.package_versions(),
        "data_sha256": facts.get("sha256"),
        "class_names": facts.get("class_names"),
        "started": runinfo.now(),
    }


def run(
    name: str,
    params: Any,
    build: Callable[[dict[str, Any]], keras.Model],
    phases: list[Phase],
    checkpoint_root: Path,
    require_gpu: bool,
) -> None:
    """A whole training stage: devices, data, resumable fit, outputs. ``params`` is the model's section
    (its ``recipe`` trains it); ``build`` gets the data facts."""
    recipe = params.recipe
    info = check_devices(name, recipe, require_gpu)
    choice = set_precision(recipe, info)
    train_split, val_split, facts = load_data()
    checkpoints = Checkpoints(checkpoint_root, name)
    fingerprint = runinfo.fingerprint(params, facts["sha256"], info["keras_backend"], choice.policy)
    out = outputs_for(name)
    model, state = start(lambda: build(facts), recipe, train_split, checkpoints, fingerprint)
    # The previous run's log waits beside the checkpoints until this run has written its outputs.
    with EpochLog(out.live, keep=checkpoint_root / f"{name}.previous-log") as epoch_log:
        epoch_log.open(state.history)  # the checkpoint's epochs first
        for record in epochs(name, model, state, phases, recipe, train_split, val_split, checkpoints):
            epoch_log.record(record)  # after the checkpoint: a log one epoch behind it is rebuilt on resume
        restore_best(model, state, recipe, checkpoints)
        write_outputs(out, model, recipe, state, run_metadata(name, params, choice, info, facts), len(train_split.y))
        checkpoints.clear()  # it exists only to resume unfinished runs
        epoch_log.succeeded()


def check_devices(name: str, recipe: Recipe, require_gpu: bool) -> dict[str, Any]:
    """The device check every training stage makes before touching data (the stage's entry point has
    passed the validation gate, :mod:`tasks.data.gate`, before Keras loaded)."""
    info = devices.describe()
    log.info(
        "%s: keras %s, backend %s, devices %s",
        name,
        keras.__version__,
        info["keras_backend"],
        ", ".join(info["devices"]),
    )
    if recipe.require_gpu if recipe.require_gpu is not None else require_gpu:
        devices.require_gpu(info, f"train_{name}")
    return info
