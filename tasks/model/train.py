"""The training loop both training stages share: resumable, epoch-checkpointed, backend-agnostic.

One ``model.fit`` call per epoch over a permutation seeded by (seed, epoch), so a run resumed
from a checkpoint sees exactly the batches an uninterrupted run would. After every epoch the
whole model -- weights *and* optimizer state, including its step counter that drives the
learning-rate schedule -- is saved to ``checkpoints/<model>/`` (outside DVC's outs, which DVC
wipes before rerunning a stage) together with the history so far, and the epoch goes to the DVCLive
log ``dvclive/<model>/`` (:mod:`tasks.model.epoch_log`), which DVC reads while the stage runs. A killed or
retried stage picks up after the last finished epoch and continues the same log.

A checkpoint can never wedge the stage: each epoch's files get new names and ``state.json``, renamed
into place last, names them with their SHA-256, so a crash mid-write leaves the previous set whole. A
checkpoint that is unreadable or does not match its digests (cut short, garbled, emptied) is logged in
one line, moved aside beside it (``<model>.damaged-<time>``, kept for a person) and training starts
afresh. The stage's outputs -- model, metadata, metrics -- are replaced together once training has
succeeded, and the previous run's training log is kept until then (put back if the run fails).

Decisions (early stopping, the best epoch) use the validation split only; the test split is
read by the evaluate stage alone.

Hand-written over Keras' ``BackupAndRestore`` callback, which resumes a single ``fit`` call: this
loop spans one ``fit`` per epoch and a recompile when VGG16 unfreezes, and its checkpoint also
carries the best epoch so far and the history.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tasks.core import devices, precision, runinfo
from tasks.core.atomic import atomic_path, require_free_space, together, write_json
from tasks.core.errors import DAMAGED_INPUT, StageError, reading, writing
from tasks.core.params import Recipe
from tasks.core.paths import PREPARED, Outputs, outputs_for
from tasks.data.splits import NUM_CLASSES, Split, load_split
from tasks.model import export
from tasks.model.epoch_log import EpochLog
from tasks.model.feed import feed
from tasks.model.models import for_inference, load_model, set_vgg_trainable
from tasks.model.progress import EpochProgress
from tasks.model.recipe import make_loss, make_optimizer
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


@dataclass
class State:
    """What a checkpoint remembers besides the model itself."""

    fingerprint: str
    epochs_done: int = 0
    phase: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = -1.0
    best_val_loss: float = math.inf
    stopped_early: bool = False
    resumed_from: list[int] = field(default_factory=list)

    def add(self, record: dict[str, Any]) -> bool:
        """Count a finished epoch in; whether it is the best so far on validation accuracy."""
        self.history.append(record)
        self.epochs_done = record["epoch"]
        is_best = record["val_accuracy"] > self.best_val_accuracy
        if is_best:
            self.best_epoch, self.best_val_accuracy, self.best_val_loss = (
                record["epoch"],
                record["val_accuracy"],
                record["val_loss"],
            )
        return is_best


def load_data(folder: Path = PREPARED) -> tuple[Split, Split, dict[str, Any]]:
    with reading(folder / "facts.json", "the prepared data's facts"):
        facts = json.loads((folder / "facts.json").read_text())
    return load_split("train", folder), load_split("val", folder), facts


# --------------------------------------------------------------------------- compile helpers


def compile_model(model: keras.Model, recipe: Recipe, optimizer: keras.optimizers.Optimizer) -> None:
    model.compile(optimizer=optimizer, loss=make_loss(recipe), metrics=["accuracy"], jit_compile=recipe.jit_compile)


def prepare(model: keras.Model, phase: Phase, recipe: Recipe, steps: int) -> None:
    """(Re)compile ``model`` for ``phase``: the layers it trains, a fresh optimizer over its epochs."""
    if phase.base is not None:
        set_vgg_trainable(model, None if phase.base == FROZEN else phase.base)
    compile_model(model, recipe, make_optimizer(recipe, steps, peak=phase.learning_rate, epochs=phase.epochs))


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


# --------------------------------------------------------------------------- checkpoints


class Checkpoints:
    """``checkpoints/<model>/``: ``state.json`` (the :class:`State` and a manifest of the files below, each
    with its SHA-256), ``last-<epoch>.keras`` (model + optimizer) and ``best-<epoch>.weights.h5``."""

    def __init__(self, root: Path, name: str) -> None:
        self.root, self.name = root, name
        self.folder = root / name
        self.state_file = self.folder / "state.json"
        self.files: dict[str, dict[str, str]] = {}  # role ("last", "best") -> {"file", "sha256"}

    @property
    def best(self) -> Path:
        """The best epoch's weights."""
        return self.folder / self.files["best"]["file"]

    def load(self, fingerprint: str) -> tuple[keras.Model | None, State]:
        with writing(self.folder):  # a checkpoint_dir the stage cannot use fails now, not after an epoch
            self.folder.mkdir(parents=True, exist_ok=True)
        if not self.state_file.is_file():
            self._keep_only(set())  # a run killed before its first checkpoint left only temporary files
            return None, State(fingerprint)
        try:
            saved = json.loads(self.state_file.read_text())
            stale = saved["fingerprint"] != fingerprint
        except (ValueError, KeyError, TypeError) as exc:
            return self._damaged(f"state.json is unreadable ({type(exc).__name__}: {exc})", fingerprint)
        if stale:
            log.info("checkpoint in %s is for other params or data; starting afresh", self.folder)
            self.clear()
            self.folder.mkdir(parents=True, exist_ok=True)
            return None, State(fingerprint)
        try:
            files = saved.pop("files")
            state = State(**saved)
            for entry in files.values():
                if _sha256(self.folder / entry["file"]) != entry["sha256"]:
                    raise ValueError(f"{entry['file']} does not match its SHA-256 in state.json")
            model = load_model(self.folder / files["last"]["file"])
        except (*DAMAGED_INPUT, OSError) as exc:  # cut short, garbled, emptied, missing
            return self._damaged(f"{type(exc).__name__}: {exc}", fingerprint)
        self.files = files
        self._keep_only({entry["file"] for entry in files.values()})
        log.info("resuming from %s after epoch %d", self.folder, state.epochs_done)
        state.resumed_from.append(state.epochs_done)
        return model, state

    def save(self, model: keras.Model, state: State, is_best: bool) -> None:
        """Write this epoch's files under new names, then ``state.json`` naming them, then drop the old ones:
        whenever the process dies, ``state.json`` names a complete set."""
        epoch = state.epochs_done
        # Writing into a full disk can crash h5py outright; refuse while the checkpoint before is still whole.
        previous = sum(self._size(e["file"]) for e in self.files.values())
        require_free_space(self.folder, previous or model.count_params() * 4 * 3)  # weights, optimizer slots
        files = dict(self.files)
        if is_best:
            files["best"] = self._write(f"best-{epoch:05d}.weights.h5", model.save_weights)
        files["last"] = self._write(f"last-{epoch:05d}.keras", model.save)
        self.files = files
        self.save_state(state)
        self._keep_only({entry["file"] for entry in files.values()})

    def save_state(self, state: State) -> None:
        write_json(self.state_file, {**state.__dict__, "files": self.files})

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.files = {}

    def _write(self, name: str, save: Callable[[Path], None]) -> dict[str, str]:
        with atomic_path(self.folder / name) as tmp:
            save(tmp)
            digest = _sha256(tmp)
        return {"file": name, "sha256": digest}

    def _size(self, name: str) -> int:
        try:
            return (self.folder / name).stat().st_size
        except OSError:
            return 0

    def _keep_only(self, names: set[str]) -> None:
        """Remove what the manifest does not name: older epochs' files, temporary files of a killed write."""
        for path in self.folder.iterdir():
            if path.name != self.state_file.name and path.name not in names and path.is_file():
                path.unlink(missing_ok=True)

    def _damaged(self, why: str, fingerprint: str) -> tuple[None, State]:
        aside = self.root / f"{self.name}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        self.folder.rename(aside)
        log.warning("checkpoint in %s is damaged (%s); moved to %s, starting afresh", self.folder, why, aside)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.files = {}
        return None, State(fingerprint)


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


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
        if state.phase != phase.name:
            prepare(model, phase, recipe, steps)
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


def fit(
    name: str,
    build: Callable[[], keras.Model],
    phases: list[Phase],
    recipe: Recipe,
    train: Split,
    val: Split,
    checkpoints: Checkpoints,
    fingerprint: str,
    epoch_log: EpochLog | None = None,
) -> tuple[keras.Model, State]:
    """Train through ``phases``, resuming from ``checkpoints`` where they match ``fingerprint``; every
    finished epoch to ``epoch_log``, the checkpoint's first; with ``recipe.restore_best``, end on the best
    epoch's weights."""
    model, state = start(build, recipe, train, checkpoints, fingerprint)
    if epoch_log is not None:
        epoch_log.open(state.history)
    for record in epochs(name, model, state, phases, recipe, train, val, checkpoints):
        if epoch_log is not None:  # after the checkpoint: a log one epoch behind it is rebuilt on resume
            epoch_log.record(record)
    restore_best(model, state, recipe, checkpoints)
    return model, state


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
    # The previous run's log waits beside the checkpoints until this run has written its outputs.
    with EpochLog(out.live, keep=checkpoint_root / f"{name}.previous-log") as epoch_log:
        data = (train_split, val_split, checkpoints, fingerprint, epoch_log)
        model, state = fit(name, lambda: build(facts), phases, recipe, *data)
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
