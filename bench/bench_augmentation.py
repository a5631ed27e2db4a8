"""Training step time of the student's augmentation against crop+flip, same model, width and batch.

Three rows, timed in one run on one backend (meant for ``KERAS_BACKEND=jax``, where Keras' own
``RandomRotation``/``RandomTranslation`` warp with ``map_coordinates`` under ``vmap``):

* ``student``: rotation 20, shifts 0.2, flip as :class:`tasks.model.layers.RandomAffineWarp`
  (three shears, each a batched one-hot matmul);
* ``student_keras``: the same draw through Keras' layers (the baseline it replaces);
* ``crop_flip``: pad + random crop, flip (the project's default augmentation).

Every row is the student's AlexNet (configs/student.yaml) with only ``augmentation``, ``width`` and
``batch_size`` changed (its precision is the recipe's, ``mixed_precision: auto``), timed as
bench/bench_throughput.py times a step (after warm-up batches, inside one ``model.fit``), in wall
time and in this process's CPU time (steadier where other jobs share the cores). The ratios are
each row's step time over crop_flip's; each row keeps its best of ``--repeats`` timings.

    KERAS_BACKEND=jax python bench/bench_augmentation.py [--width 0.5] [--batch 64] [--images 1024]

Writes bench/results/augmentation-<backend>-w<width>.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from bench_throughput import MEAN, STD, WARMUP_BATCHES, images_needed
from common import describe_machine, machine, one_hot, recipe_params, table, write_result

import keras
from tasks.core.devices import describe
from tasks.model.feed import feed
from tasks.model.models import build_alexnet
from tasks.model.train import compile_model, make_optimizer, set_precision

AUGMENTATIONS = ("student", "student_keras", "crop_flip")


class Clocks(keras.callbacks.Callback):
    """Wall and process CPU time at the end of every training batch (CPU time: what the step cost
    this process, whatever else the machine's cores were running)."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[tuple[float, float]] = []

    def on_train_batch_end(self, batch: int, logs: object = None) -> None:
        self.ends.append((time.perf_counter(), time.process_time()))


def step_seconds(x: np.ndarray, y: np.ndarray, images: int, **changes: object) -> tuple[float, float, str]:
    """(wall, CPU) seconds per training step of configs/student.yaml with ``changes``, and the policy."""
    params = recipe_params("student", **changes)
    policy = set_precision(params.recipe, describe()).policy
    model = build_alexnet(params, MEAN, STD)
    batch = params.recipe.batch_size
    compile_model(model, params.recipe, make_optimizer(params.recipe, 10))
    steps, clocks = max(1, images // batch), Clocks()
    n = images_needed(images, batch)
    model.fit(
        **feed(x[:n], y[:n], batch), epochs=1, steps_per_epoch=steps + WARMUP_BATCHES, verbose=0, callbacks=[clocks]
    )
    (wall0, cpu0), (wall1, cpu1) = clocks.ends[WARMUP_BATCHES - 1], clocks.ends[-1]
    return (wall1 - wall0) / steps, (cpu1 - cpu0) / steps, policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--images", type=int, default=512, help="images timed per row")
    ap.add_argument("--repeats", type=int, default=2, help="timings per row (alternating rows); the best is kept")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images_needed(args.images, args.batch), 32, 32, 3), dtype=np.uint8)
    y = one_hot(rng.integers(0, 10, len(x)))
    host = machine(rates=False)
    print(describe_machine(host), flush=True)
    same = {"width": args.width, "batch_size": args.batch}
    runs: dict[str, list[tuple[float, float]]] = {aug: [] for aug in AUGMENTATIONS}
    # Alternating rows, so that a busy moment on a shared machine does not land on one row only.
    for _ in range(args.repeats):
        for aug in AUGMENTATIONS:
            wall, cpu, policy = step_seconds(x, y, args.images, augmentation=aug, **same)
            runs[aug].append((wall, cpu))
            print(f"{aug}: {1000 * wall:.0f} ms/step wall, {1000 * cpu:.0f} ms/step CPU", flush=True)
    best = {aug: (min(w for w, _ in r), min(c for _, c in r)) for aug, r in runs.items()}
    rows = [
        {
            "augmentation": aug,
            "ms/step (wall)": round(1000 * wall, 1),
            "ms/step (CPU)": round(1000 * cpu, 1),
            "x crop_flip (wall)": round(wall / best["crop_flip"][0], 2),
            "x crop_flip (CPU)": round(cpu / best["crop_flip"][1], 2),
        }
        for aug, (wall, cpu) in best.items()
    ]
    print()
    print(f"AlexNet seed x{args.width}, batch {args.batch}, {policy}, backend {keras.backend.backend()}")
    print(table(rows, list(rows[0])))
    result = {"machine": host, "args": vars(args), "policy": policy, "rows": rows, "runs": runs}
    write_result(f"augmentation-{keras.backend.backend()}-w{args.width}", result)


if __name__ == "__main__":
    main()
