"""Training checkpoints: ``checkpoints/<model>/`` holds the last finished epoch's model (weights *and*
optimizer state, whose step counter drives the learning-rate schedule), the best epoch's weights and the
:class:`State` -- history, best epoch, phase -- that a resumed run goes on from.

A checkpoint can never wedge the stage: each epoch's files get new names and ``state.json``, renamed
into place last, names them with their SHA-256, so a crash mid-write leaves the previous set whole. A
checkpoint that is unreadable or does not match its digests (cut short, garbled, emptied) is logged in
one line, moved aside beside it (``<model>.damaged-<time>``, kept for a person) and training starts
afresh; one written for other params or data is dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from tasks.core.atomic import atomic_path, require_free_space, write_json
from tasks.core.errors import DAMAGED_INPUT, writing
from tasks.model.models import load_model

log = logging.getLogger(__name__)


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
