"""Training throughput: the project's training step vs a plain Keras script of the student's recipe.

Same model (AlexNet ``seed`` stack), same batch size, same machine, same run:

* ``student script``: ``tf.keras`` ``ImageDataGenerator`` (rotation 20, shifts 0.2, flip) on the
  CPU feeding ``model.fit`` -- how the notebook trained;
* ``project``: the pipeline's model with its augmentation as layers inside the model, fed numpy
  arrays the way the training loop feeds them (:func:`tasks.model.feed.feed`), compiled by
  :mod:`tasks.model.train` -- once with the student's augmentation, once with crop+flip, and for the
  project's CPU recipe (``configs/quick-cpu.yaml``).

Each row times the training steps themselves, inside one ``model.fit``: from the end of the third
batch (compilation and warm-up done) to the end of the last. The seconds ``fit`` spends setting up
and tearing down its input pipeline are left out -- they are per call, not per step, and the
training loop's feed keeps them near zero (see tasks/model/feed.py).

Achieved FLOP/s (conv and dense multiply-adds x 2 x 3 for forward + backward) is reported as a
fraction of this machine's own matmul rate in the row's precision (float32, or bfloat16 where
``mixed_precision: auto`` chose it), measured in the same run; the output starts with the processor
(model, flags, cores) those rates belong to.

    python bench/bench_throughput.py [--width 1.0] [--batch 64] [--images 2048]

Writes bench/results/throughput.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import (
    describe_machine,
    machine,
    one_hot,
    recipe_params,
    table,
    throughput_row,
    train_flops_per_image,
    write_result,
)

import keras
from tasks.core.devices import describe
from tasks.model.feed import feed
from tasks.model.models import build_alexnet
from tasks.model.train import compile_model, make_optimizer, set_precision

MEAN, STD = [125.3, 123.0, 113.9], [63.0, 62.1, 66.7]


WARMUP_BATCHES = 3


class StepClock(keras.callbacks.Callback):
    """The end time of every training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[float] = []

    def on_train_batch_end(self, batch: int, logs: object = None) -> None:
        self.ends.append(time.perf_counter())


def timed_fit(model: keras.Model, data: dict[str, object], images: int, batch: int) -> float:
    """Images per second of the training steps of one ``model.fit`` over ``data`` (``fit``'s keyword
    arguments), counting ``images`` images after ``WARMUP_BATCHES`` warm-up batches."""
    steps = max(1, images // batch)
    clock = StepClock()
    model.fit(**data, epochs=1, steps_per_epoch=steps + WARMUP_BATCHES, verbose=0, callbacks=[clock])
    return steps * batch / (clock.ends[-1] - clock.ends[WARMUP_BATCHES - 1])


def images_needed(images: int, batch: int) -> int:
    """How many images a timed row reads: the timed ones and the warm-up batches."""
    return (max(1, images // batch) + WARMUP_BATCHES) * batch


def student_script(x: np.ndarray, y: np.ndarray, width: float, batch: int, images: int) -> tuple[float, float]:
    """The notebook's loop: ImageDataGenerator on the CPU, x/255 inputs, Adam 1e-4."""
    import tensorflow as tf

    params = recipe_params("student", width=width, augmentation="none")
    keras.mixed_precision.set_global_policy("float32")
    model = build_alexnet(params, [0.0] * 3, [255.0] * 3)  # Normalization(0, 255) == the notebook's x / 255
    model.compile(keras.optimizers.Adam(1e-4), "categorical_crossentropy", metrics=["accuracy"])
    gen = tf.keras.preprocessing.image.ImageDataGenerator(
        rotation_range=20, width_shift_range=0.2, height_shift_range=0.2, horizontal_flip=True
    )
    flow = gen.flow(x.astype("float32"), y, batch_size=batch, seed=0)
    return timed_fit(model, {"x": flow}, images, batch), train_flops_per_image(model)


def project_step(
    x: np.ndarray, y: np.ndarray, config: str, images: int, **changes: object
) -> tuple[float, float, int, str]:
    params = recipe_params(config, **changes)
    policy = set_precision(params.recipe, describe()).policy
    model = build_alexnet(params, MEAN, STD)
    steps = max(1, len(x) // params.recipe.batch_size)
    compile_model(model, params.recipe, make_optimizer(params.recipe, steps))
    batch = params.recipe.batch_size
    n = images_needed(images, batch)
    if len(x) < n:
        raise ValueError(f"{n} images needed for {images} timed at batch {batch}, {len(x)} given")
    return timed_fit(model, feed(x[:n], y[:n], batch), images, batch), train_flops_per_image(model), batch, policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--images", type=int, default=2048, help="images timed per row")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images_needed(args.images, 512), 32, 32, 3), dtype=np.uint8)
    y = one_hot(rng.integers(0, 10, len(x)))
    host = machine()
    print(describe_machine(host), flush=True)
    rates = host["matmul_gflops"]
    rows = []

    def add(name: str, rate: float, flops: float, batch: int, policy: str) -> None:
        rows.append({"step": name, **throughput_row(rate, flops, batch, policy, rates)})
        print(rows[-1], flush=True)

    rate, flops = student_script(x, y, args.width, args.batch, args.images)
    add(f"student script (ImageDataGenerator), seed x{args.width}", rate, flops, args.batch, "float32")
    same = {"width": args.width, "batch_size": args.batch, "batch_norm": False, "variant": "seed"}
    for aug in ("student", "crop_flip"):
        rate, flops, batch, policy = project_step(x, y, "student", args.images, augmentation=aug, **same)
        add(f"project step, seed x{args.width}, {aug} aug in model", rate, flops, batch, policy)
    for forced in ("auto", False):
        rate, flops, batch, policy = project_step(x, y, "quick-cpu", args.images, mixed_precision=forced)
        add(
            f"project step, CPU recipe (configs/quick-cpu.yaml), mixed_precision {str(forced).lower()}",
            rate,
            flops,
            batch,
            policy,
        )

    print()
    print(table(rows, ["step", "batch", "precision", "img/s", "GFLOP/img", "GFLOP/s", "of matmul rate"]))
    write_result("throughput", {"machine": host, "rows": rows})


if __name__ == "__main__":
    main()
