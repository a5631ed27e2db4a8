"""Learning-rate schedules and optimizers built from params."""

from __future__ import annotations


import keras
import numpy as np
import pytest

from tasks.core.params import AlexNetParams, parse
from tasks.model.recipe import EpochSchedule, make_loss, make_optimizer
from tests.conftest import params_section

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
    assert make_loss(params.recipe).get_config()["label_smoothing"] == pytest.approx(0.1)


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
