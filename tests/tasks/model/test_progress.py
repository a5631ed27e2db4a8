"""Progress lines inside an epoch: when they come, what they say, and the stage's time estimate."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest

from tasks.model.progress import EpochProgress, Schedule, estimate, format_duration, progress_line


class Clock:
    """A fake clock that moves ``step`` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def reported_steps(total: int, seconds_per_step: float) -> list[int]:
    schedule = Schedule(total)
    return [s for s in range(1, total + 1) if schedule.due(s, s * seconds_per_step)]


def test_at_least_every_tenth_of_a_long_epoch() -> None:
    # 1,000 steps of 1 s: a line each 100 steps would leave 100 s of silence, so every 30 s instead.
    steps = reported_steps(1000, 1.0)
    assert all(b - a <= 30 for a, b in zip(steps, steps[1:]))
    # 100 steps of 0.5 s: the 10 % stride (10 steps = 5 s) comes first.
    assert reported_steps(100, 0.5) == list(range(10, 100, 10))


def test_short_epochs_stay_quiet_and_the_last_step_is_left_to_the_summary() -> None:
    assert reported_steps(100, 0.01) == []  # a 1 s epoch
    assert reported_steps(100, 0.049) == []  # on course for 4.9 s
    assert 200 not in reported_steps(200, 1.0)


def test_an_epoch_of_a_few_seconds_reports_from_its_first_tenth() -> None:
    # The quick CPU setting: 176 steps of about 80 ms, a 14 s epoch.
    assert reported_steps(176, 0.08) == list(range(18, 176, 18))


def test_progress_line_and_durations() -> None:
    line = progress_line("alexnet epoch 1/30", 50, 200, 50 * 64, 10.0)
    assert line == "alexnet epoch 1/30 step 50/200 (25 %)  320 img/s  epoch ETA 30 s"
    assert [format_duration(s) for s in (59.6, 600, 9000)] == ["60 s", "10 min", "2.5 h"]
    assert estimate(0.5, 352, 30).startswith("about 88 min of training left for 30 epoch(s) at 500 ms a step")


@pytest.mark.parametrize("mode", ["fit", "predict"])
def test_callback_logs_from_a_real_keras_loop(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile("sgd", "categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(400, 4)).astype("float32")
    y = np.eye(3, dtype="float32")[np.arange(400) % 3]
    progress = EpochProgress("tiny", 40, 10, logging.getLogger("test.progress"), epochs_left=3, clock=Clock(1.0))
    with caplog.at_level(logging.INFO, logger="test.progress"):
        if mode == "fit":
            model.fit(x, y, batch_size=10, epochs=1, verbose=0, callbacks=[progress])
        else:
            model.predict(x, batch_size=10, verbose=0, callbacks=[progress])
    lines = [r.getMessage() for r in caplog.records]
    estimates = [line for line in lines if "of training left" in line]
    lines = [line for line in lines if line not in estimates]
    assert lines and all(line.startswith("tiny step ") for line in lines)
    assert "tiny step 4/40 (10 %)" in lines[0] and "tiny step 8/40" in lines[1]  # every 10 %
    # Once, from the first rate measured (1 s a step, the clock's): 3 epochs of 40 steps.
    assert estimates == [f"tiny: {estimate(1.0, 40, 3)}"] and "about 2 min" in estimates[0], estimates
