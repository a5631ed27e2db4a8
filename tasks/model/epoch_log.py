"""The training stages' per-epoch log, kept by DVCLive in ``dvclive/<model>/`` after every epoch.

DVCLive's generic API (``Live.log_metric`` / ``Live.next_step``), not its Keras callback: the
stages' own epoch loop calls it, so the log does not care which Keras backend trains. Each epoch
appends a row to ``plots/metrics/<name>.tsv`` (one file per number, for ``dvc plots``) and rewrites
``metrics.json`` (the latest epoch, for ``dvc exp show`` and ``dvc metrics show``), so DVC sees a
stage's progress while it runs, not only once it ends. DVCLive's step is the epoch number (1, 2,
...): its ``step`` column reads as "epochs done".

A resumed stage continues the same log: with ``Live(resume=True)`` when the log on disk holds
exactly the epochs the checkpoint holds; otherwise -- DVC deletes a stage's outputs before it
reruns it, or the stage was killed between the checkpoint and the log -- the log is rebuilt from the
checkpoint's history, which holds every number the log does, so either way each epoch is in it
exactly once.

A run that starts afresh does not delete the previous run's log: with ``keep`` it is moved there (beside
the checkpoints) and put back if this run fails, and dropped once this run has succeeded.

Nothing here goes to the network: DVCLive would post live metrics to DVC Studio when a Studio token
is configured; ``DVC_STUDIO_OFFLINE`` turns that off. No HTML report is written (DVCLive's loads
Vega from a CDN), and DVCLive leaves dvc.yaml (which declares these files) and the experiment
(which ``dvc exp run`` records) alone.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

from dvclive import Live

log = logging.getLogger(__name__)

#: The numbers of each epoch that get a curve (``plots/metrics/<name>.tsv``), as the history records them.
PLOTTED = ("learning_rate", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds", "images_per_second")
#: Text: in ``metrics.json`` only (the phase the latest epoch ran in), no curve.
TEXT = ("phase",)


def metrics_file(folder: Path) -> Path:
    return folder / "metrics.json"


def plots_dir(folder: Path) -> Path:
    """Where DVCLive keeps the per-epoch ``<name>.tsv`` files of a log in ``folder``."""
    return folder / "plots" / "metrics"


def open_writer(folder: Path, resume: bool) -> Live:
    """DVCLive's ``Live`` for ``folder`` (``resume=False`` clears its log)."""
    # Live metrics go to DVC Studio only when a token is configured; a training stage never sends them.
    os.environ["DVC_STUDIO_OFFLINE"] = "true"
    # report=None: no HTML report (it needs a CDN); dvcyaml=None: dvc.yaml declares the outputs and
    # stays as written; save_dvc_exp=False: DVC runs the stage and records the experiment.
    return Live(str(folder), resume=resume, report=None, save_dvc_exp=False, dvcyaml=None)


def read_tsv(path: Path) -> list[tuple[int, str]]:
    """(step, value) per row of one DVCLive metric file, in file order."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [(int(row["step"]), row[path.stem]) for row in csv.DictReader(fh, delimiter="\t")]


def logged_epochs(folder: Path) -> list[int] | None:
    """The epochs the log in ``folder`` holds, when every file agrees on them; ``None`` when it is
    missing, partial (a stage killed halfway through writing an epoch) or holds an epoch twice."""
    try:
        step = json.loads(metrics_file(folder).read_text())["step"]
        per_file = [[s for s, _ in read_tsv(plots_dir(folder) / f"{name}.tsv")] for name in PLOTTED]
    except (FileNotFoundError, ValueError, KeyError):
        return None
    epochs = per_file[0]
    if any(steps != epochs for steps in per_file) or len(set(epochs)) != len(epochs):
        return None
    return epochs if epochs and epochs[-1] == step else None


def read_history(folder: Path) -> list[dict[str, Any]]:
    """The per-epoch history from DVCLive's TSV files in ``folder`` (``plots/metrics`` of a log):
    one dict per epoch, ``epoch`` and a float per metric. A missing folder raises FileNotFoundError."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} (the training log) does not exist")
    rows: dict[int, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.tsv")):
        for step, value in read_tsv(path):
            rows.setdefault(step, {"epoch": step})[path.stem] = float(value)
    return [rows[step] for step in sorted(rows)]


class EpochLog:
    """One model's DVCLive log: :meth:`open` once the checkpoint is read, :meth:`record` each epoch,
    :meth:`succeeded` once the run's outputs are written.

    ``keep``: where the previous run's log waits meanwhile (None: a fresh log simply replaces it).
    """

    def __init__(self, folder: Path, keep: Path | None = None) -> None:
        self.folder, self.keep = folder, keep
        self._live: Live | None = None
        self._done = False

    def open(self, history: list[dict[str, Any]]) -> None:
        """Start logging a run whose checkpoint holds ``history`` (empty: the run starts afresh)."""
        epochs = [int(h["epoch"]) for h in history]
        if epochs and logged_epochs(self.folder) == epochs:
            self._live = open_writer(self.folder, resume=True)
            log.info("continuing the training log in %s after epoch %d", self.folder, epochs[-1])
            return
        self._set_aside()
        self._live = open_writer(self.folder, resume=False)
        for record in history:
            self.record(record)
        if history:
            log.info("training log %s rebuilt from the checkpoint's %d epochs", self.folder, len(history))

    def record(self, record: dict[str, Any]) -> None:
        """Log one finished epoch (a history record of tasks.model.train) and write it out at once."""
        if self._live is None:
            raise RuntimeError("EpochLog.record before EpochLog.open")
        self._live.step = int(record["epoch"])
        for name in PLOTTED:
            self._live.log_metric(name, float(record[name]))
        for name in TEXT:
            self._live.log_metric(name, str(record[name]), plot=False)
        self._live.next_step()

    def succeeded(self) -> None:
        """The run's outputs are in place: the previous run's log is no longer needed."""
        self._done = True
        if self.keep is not None:
            shutil.rmtree(self.keep, ignore_errors=True)

    def _set_aside(self) -> None:
        """Before a log is (re)written from the start: keep the previous run's, drop a partial one."""
        if self.keep is None or not self.folder.exists():
            return
        if not self.keep.exists():  # the last finished run's log (or given back by a failed run)
            self.keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(self.folder, self.keep)
        else:  # the log of an unfinished run: the finished one's is already kept
            shutil.rmtree(self.folder)

    def _put_back(self) -> None:
        if self.keep is not None and self.keep.exists():
            shutil.rmtree(self.folder, ignore_errors=True)
            shutil.move(self.keep, self.folder)
            log.info("the previous run's training log is back in %s", self.folder)

    def close(self) -> None:
        if self._live is not None:
            self._live.end()
            self._live = None

    def __enter__(self) -> EpochLog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
        # A run that failed gives the previous log back; a killed one leaves it kept for the next run.
        if error is not None and not self._done:
            self._put_back()
