"""Training step time of the student's augmentation against crop+flip, same model, width and batch.

Three rows, timed in one run on one backend (meant for ``KERAS_BACKEND=jax``, where Keras' own
``RandomRotation``/``RandomTranslation`` warp with ``map_coordinates`` under ``vmap``):

* ``student``: rotation 20, shifts 0.2, flip as :class:`tasks.model.layers.RandomAffineWarp`
  (three shears, each a batched one-hot matmul);
* ``student_keras``: the same draw through Keras' layers (the baseline it replaces);
* ``crop_flip``: pad + random crop, flip (the project's default augmentation).

Every row is the student's AlexNet (configs/student.yaml) with only ``augmentation``, ``width`` and
``batch_size`` changed (its precision is the recipe's, ``mixed_precision: auto``), timed as
bench/bench_throughput.py times a step (after warm-up batches, inside one ``model.fit``). The
ratios are each row's step time over crop_flip's.

    KERAS_BACKEND=jax python bench/bench_augmentation.py [--width 0.5] [--batch 64] [--images 1024]

Writes bench/results/augmentation-<backend>.json.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from bench_throughput import images_needed, project_step
from common import REPO, describe_machine, machine, one_hot, table

import keras

AUGMENTATIONS = ("student", "student_keras", "crop_flip")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--images", type=int, default=1024, help="images timed per row")
    ap.add_argument("--repeats", type=int, default=2, help="timings per row (alternating rows); the best is kept")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images_needed(args.images, args.batch), 32, 32, 3), dtype=np.uint8)
    y = one_hot(rng.integers(0, 10, len(x)))
    host = machine(rates=False)
    print(describe_machine(host), flush=True)
    same = {"width": args.width, "batch_size": args.batch}
    rates: dict[str, list[float]] = {aug: [] for aug in AUGMENTATIONS}
    # Alternating rows, so that a busy moment on a shared machine does not land on one row only.
    for _ in range(args.repeats):
        for aug in AUGMENTATIONS:
            rate, _, _, policy = project_step(x, y, "student", args.images, augmentation=aug, **same)
            rates[aug].append(rate)
            print(f"{aug}: {rate:.1f} img/s", flush=True)
    base = args.batch / max(rates["crop_flip"])
    rows = []
    for aug in AUGMENTATIONS:
        step = args.batch / max(rates[aug])
        rows.append(
            {
                "augmentation": aug,
                "img/s": round(max(rates[aug]), 1),
                "ms/step": round(1000 * step, 1),
                "x crop_flip": round(step / base, 2),
            }
        )
    print()
    print(f"AlexNet seed x{args.width}, batch {args.batch}, {policy}, backend {keras.backend.backend()}")
    print(table(rows, ["augmentation", "img/s", "ms/step", "x crop_flip"]))
    out = REPO / f"bench/results/augmentation-{keras.backend.backend()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"machine": host, "args": vars(args), "policy": policy, "rows": rows, "rates": rates}, indent=2)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
