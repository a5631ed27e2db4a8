"""The training recipe as Keras objects: learning-rate schedule, optimizer and loss, from params.

Schedules are per optimizer step and written in ``keras.ops``, so they run on every backend and
resume exactly: the optimizer's step counter is saved with the model.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from tasks.core.params import Recipe
from tasks.model.layers import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate as a function of the (fractional) epoch.

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


def make_optimizer(
    recipe: Recipe, steps_per_epoch: int, peak: float | None = None, epochs: int | None = None
) -> keras.optimizers.Optimizer:
    """The optimizer of ``recipe.optimizer`` on its :class:`EpochSchedule` (``recipe.schedule`` peaking at
    ``peak`` over ``epochs``: the recipe's learning rate and epochs unless a phase gives its own); with
    ``ema_decay`` it also keeps an exponential moving average of the weights (Keras' ``use_ema``).

    Keras swaps the average into the model at the end of every ``fit`` call
    (``finalize_variable_values``), and the training loop runs one ``fit`` per epoch: so each epoch
    ends on the averaged weights -- validation, the best-epoch checkpoint and the saved model all
    see them -- and the next epoch trains on from there (an epoch-long lookahead).
    """
    schedule = EpochSchedule(
        recipe.schedule,
        recipe.learning_rate if peak is None else peak,
        steps_per_epoch,
        recipe.epochs if epochs is None else epochs,
        recipe.warmup_epochs,
    )
    decay = recipe.weight_decay or None
    ema: dict[str, Any] = {"use_ema": True, "ema_momentum": recipe.ema_decay} if recipe.ema_decay else {}
    if recipe.optimizer == "sgd":
        return keras.optimizers.SGD(
            schedule, momentum=recipe.momentum, nesterov=recipe.nesterov, weight_decay=decay, **ema
        )
    if recipe.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=recipe.weight_decay, **ema)
    return keras.optimizers.Adam(schedule, weight_decay=decay, **ema)


def make_loss(recipe: Recipe) -> keras.losses.Loss:
    """Cross-entropy on one-hot labels (label smoothing needs them one-hot)."""
    return keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing)
