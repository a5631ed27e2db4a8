"""Progress lines inside an epoch (and the whole stage's estimated time) for logs that are not terminals.

``dvc repro`` output and Prefect run logs show one line per message, so a tqdm bar there is noise;
instead a line ``step N/M``, images/s so far and the epoch's ETA is logged at least every 10 % of
the epoch and at most every 30 s apart (an epoch on course to end within 5 s stays quiet). After the first
report of the first epoch this process trains, the stage's remaining time is estimated once, so a
user who launched GPU-sized defaults on a CPU learns within a minute that it will take hours.

The Keras side is a callback that only counts steps and reads the clock (it never reads the
batch's metrics, which would make JAX wait for each step to finish).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import keras

MAX_SILENCE_SECONDS = 30.0
EVERY_FRACTION = 0.1
#: An epoch on course to be shorter than this (a GPU's) prints only its summary line: ten lines a second help no one.
QUIET_SECONDS = 5.0


@dataclass
class Schedule:
    """When to report: every ``ceil(total * fraction)`` steps, or sooner once ``max_silence`` passed;
    never in an epoch that, at its pace so far, ends within ``quiet`` seconds of ``start``."""

    total: int
    start: float = 0.0
    max_silence: float = MAX_SILENCE_SECONDS
    fraction: float = EVERY_FRACTION
    quiet: float = QUIET_SECONDS
    last_step: int = 0
    last_time: float = 0.0

    def due(self, step: int, now: float) -> bool:
        if step >= self.total:
            return False  # the epoch's own summary line follows at once
        elapsed = now - self.start
        if elapsed < self.quiet and elapsed * self.total / step < self.quiet:
            return False  # an epoch on course to end within `quiet` seconds: only its summary line
        stride = max(1, math.ceil(self.total * self.fraction))
        if step - self.last_step >= stride or now - self.last_time >= self.max_silence:
            self.last_step, self.last_time = step, now
            return True
        return False


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def progress_line(label: str, step: int, total: int, images: int, elapsed: float) -> str:
    rate = images / elapsed if elapsed > 0 else 0.0
    eta = (total - step) * elapsed / step if step else math.inf
    return (
        f"{label} step {step}/{total} ({100 * step / total:.0f} %)  {rate:.0f} img/s  "
        f"epoch ETA {format_duration(eta) if math.isfinite(eta) else '?'}"
    )


class EpochProgress(keras.callbacks.Callback):
    """Log progress inside a ``fit`` or ``predict`` call; given ``epochs_left``, the first report also
    estimates the training time left for that many epochs of ``steps``."""

    def __init__(
        self,
        label: str,
        steps: int,
        batch_size: int,
        log: logging.Logger,
        epochs_left: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__()
        self.label, self.steps, self.batch_size, self.log = label, steps, batch_size, log
        self.epochs_left = epochs_left
        self.clock = clock
        self.start = 0.0
        self.first_step_done = 0.0
        self.schedule = Schedule(steps)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.start = self.clock()
        self.first_step_done = 0.0
        self.schedule = Schedule(self.steps, start=self.start, last_time=self.start)

    def on_predict_begin(self, logs: dict | None = None) -> None:
        self.on_train_begin(logs)

    def on_predict_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.on_train_batch_end(batch, logs)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        step = batch + 1
        now = self.clock()
        if step == 1:
            self.first_step_done = now  # the first step carries the compilation; rates leave it out
        if not self.schedule.due(step, now):
            return
        if step > 1:
            elapsed = now - self.first_step_done
            self.log.info(progress_line(self.label, step, self.steps, (step - 1) * self.batch_size, elapsed))
            if self.epochs_left:
                self.log.info("%s: %s", self.label, estimate(elapsed / (step - 1), self.steps, self.epochs_left))
                self.epochs_left = None
        else:
            self.log.info(
                "%s step 1/%d (first step, including compilation: %.1f s)", self.label, self.steps, now - self.start
            )


def estimate(seconds_per_step: float, steps_per_epoch: int, epochs_left: int) -> str:
    total = seconds_per_step * steps_per_epoch * epochs_left
    return (
        f"about {format_duration(total)} of training left for {epochs_left} epoch(s) at "
        f"{seconds_per_step * 1000:.0f} ms a step (validation and checkpoints not counted)"
    )
