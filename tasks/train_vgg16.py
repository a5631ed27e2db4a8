"""Stage ``train_vgg16``: VGG16 (ImageNet weights by default) fine-tuned in two phases (section ``vgg16``).

Phase ``head``: ``vgg16.head_epochs`` epochs with the convolutional base frozen at
``vgg16.learning_rate``. Phase ``fine_tune`` (``train`` from random weights): the rest of
``vgg16.epochs`` with the base unfrozen from block ``vgg16.unfreeze_from`` onwards at
``vgg16.fine_tune_learning_rate``. Keras loads inside the functions below, after ``main`` has checked
the params and the validation gate.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.core.cli import run_stage
from tasks.core.params import TrainParams, VGG16Params, load
from tasks.data.gate import require_validated

if TYPE_CHECKING:
    import keras

    from tasks.model import train

NAME = "vgg16"


def phases(params: VGG16Params) -> list[train.Phase]:
    """``head`` (the base frozen, at ``learning_rate``), then ``fine_tune`` (the base trains from
    ``unfreeze_from``, at ``fine_tune_learning_rate``) -- named ``train`` where the base starts from random
    weights, as there is nothing to fine-tune; a phase of no epochs is left out."""
    from tasks.model import train

    recipe, rest = params.recipe, params.recipe.epochs - params.head_epochs
    head = train.Phase("head", params.head_epochs, recipe.learning_rate, base=train.FROZEN)
    name = "train" if params.weights == "none" else "fine_tune"
    whole = train.Phase(name, rest, params.fine_tune_learning_rate, base=params.unfreeze_from)
    return [p for p in (head, whole) if p.epochs > 0]


def build(params: VGG16Params, facts: dict[str, Any]) -> keras.Model:
    """A fresh VGG16 (its own ImageNet preprocessing inside, so the data's ``facts`` are not needed)."""
    from tasks.model.models import build_vgg16

    return build_vgg16(params)


def main() -> None:
    shared, params = load(TrainParams), load(VGG16Params)
    require_validated()
    from tasks.model import train  # Keras loads here, once the params and the data have passed

    train.run(NAME, params, partial(build, params), phases(params), Path(shared.checkpoint_dir), shared.require_gpu)


if __name__ == "__main__":
    run_stage(main)
