"""Stage ``train_alexnet``: AlexNet from scratch on the prepared train split (section ``alexnet``)."""

from __future__ import annotations

import logging
from pathlib import Path

import keras

from tasks import runinfo, train
from tasks.cli import run_stage
from tasks.models import build_alexnet
from tasks.params import AlexNetParams, load_alexnet_params, load_train_params
from tasks.recipe import make_optimizer, make_schedule

log = logging.getLogger(__name__)
NAME = "alexnet"


def phases(params: AlexNetParams) -> list[train.Phase]:
    recipe = params.recipe

    def prepare(model: keras.Model, steps: int) -> None:
        train.compile_model(model, recipe, make_optimizer(recipe, make_schedule(recipe, steps)))

    return [train.Phase("train", recipe.epochs, prepare)]


def run(params: AlexNetParams, checkpoint_root: Path, require_gpu: bool) -> None:
    recipe = params.recipe
    info = train.start(NAME, recipe, require_gpu)
    policy = train.set_precision(recipe, info)
    train_split, val_split, facts = train.load_data()
    checkpoints = train.Checkpoints(checkpoint_root, NAME)
    fingerprint = runinfo.fingerprint(params, facts["sha256"], info["keras_backend"], policy)
    model, state = train.fit(
        NAME, lambda: build_alexnet(params, facts["train_channel_mean"], facts["train_channel_std"]),
        phases(params), recipe, train_split, val_split, checkpoints, fingerprint)
    meta = train.run_metadata(NAME, params, policy, info, facts)
    train.finish(train.outputs_for(NAME), model, recipe, state, meta, len(train_split.y), checkpoints)


def main() -> None:
    shared = load_train_params()
    run(load_alexnet_params(), Path(shared.checkpoint_dir), shared.require_gpu)


if __name__ == "__main__":
    run_stage(main)
