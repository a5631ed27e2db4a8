"""Where the CPU recipe's time goes: one training step of configs/quick-cpu.yaml with one thing changed at a time.

Each row times the training steps of ``model.fit`` on random uint8 images (after a warm-up; see
bench/bench_throughput.py) with the quick CPU recipe and
a single change -- augmentation off, batch norm off, XLA on, float32 or bfloat16, batch size -- and
states achieved FLOP/s against this machine's matmul rate in the row's precision, measured in the
same run. The difference between a row and the first one is what that part costs.

    python bench/bench_cpu_recipe_ablation.py [--images 2048]

Writes bench/results/cpu_recipe_ablation.json.
"""

from __future__ import annotations

import argparse

import numpy as np
from bench_throughput import images_needed, project_step
from common import describe_machine, machine, one_hot, table, throughput_row, write_result

VARIANTS: list[tuple[str, dict[str, object]]] = [
    ("quick-cpu as shipped", {}),
    ("float32", {"mixed_precision": False}),
    ("no augmentation", {"augmentation": "none"}),
    ("no batch norm", {"batch_norm": False}),
    ("XLA (jit_compile true)", {"jit_compile": True}),
    ("batch 128", {"batch_size": 128}),
    ("batch 512", {"batch_size": 512}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2048, help="images timed per row")
    args = ap.parse_args()
    host = machine()
    print(describe_machine(host), flush=True)
    rates = host["matmul_gflops"]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images_needed(args.images, 512), 32, 32, 3), dtype=np.uint8)
    y = one_hot(rng.integers(0, 10, len(x)))
    rows = []
    for name, changes in VARIANTS:
        rate, flops, batch, policy = project_step(x, y, "quick-cpu", args.images, **changes)
        rows.append({"variant": name, **throughput_row(rate, flops, batch, policy, rates)})
        print(rows[-1], flush=True)
    print()
    print(table(rows, ["variant", "batch", "precision", "img/s", "GFLOP/s", "of matmul rate"]))
    write_result("cpu_recipe_ablation", {"machine": host, "rows": rows})


if __name__ == "__main__":
    main()
