"""Stage ``train_alexnet``: AlexNet from scratch on the prepared train split (section ``alexnet``).

Keras loads inside the functions below, after ``main`` has checked the params and the validation gate: a
typo costs a fraction of a second, not a TensorFlow import.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.core.cli import run_stage
from tasks.core.params import AlexNetParams, TrainParams, load
from tasks.data.gate import require_validated

if TYPE_CHECKING:
    import keras

    from tasks.model import train

NAME = "alexnet"


def phases(params: AlexNetParams) -> list[train.Phase]:
    """One phase: every layer trains for ``epochs`` under one schedule peaking at ``learning_rate``."""
    from tasks.model import train

    return [train.Phase("train", params.recipe.epochs, params.recipe.learning_rate)]


def build(params: AlexNetParams, facts: dict[str, Any]) -> keras.Model:
    """A fresh AlexNet, normalising by the train split's channel statistics (``facts`` of the prepared data)."""
    from tasks.model.models import build_alexnet

    return build_alexnet(params, facts["train_channel_mean"], facts["train_channel_std"])


def main() -> None:
    shared, params = load(TrainParams), load(AlexNetParams)
    require_validated()
    from tasks.model import train  # Keras loads here, once the params and the data have passed

    train.run(NAME, params, partial(build, params), phases(params), Path(shared.checkpoint_dir), shared.require_gpu)


if __name__ == "__main__":
    run_stage(main)
