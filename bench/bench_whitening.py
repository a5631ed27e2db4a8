"""Whitening the first convolution (``whiten_conv1``) on the CPU recipes: each recipe run without it, then with it.

Both runs go through the project's training loop on the real CIFAR-10 split, on this machine, one after
the other (:func:`bench_time_to_accuracy.run_recipe`, whose ``CONFIG[:KEY=VALUE,...]`` recipe syntax this
takes), and the table gives validation accuracy after every epoch and the final test accuracy of each.

    python bench/bench_whitening.py --recipes quick-cpu-half quick-cpu-half:batch_norm=false

Writes bench/results/whitening.json.
"""

from __future__ import annotations

import argparse
import logging
import time

from bench_time_to_accuracy import run_recipe
from common import describe_machine, machine, real_splits, table, write_result


def with_whitening(spec: str) -> str:
    return f"{spec}{',' if ':' in spec else ':'}whiten_conv1=true"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", default=["quick-cpu-half"])
    ap.add_argument("--budget", type=float, default=900.0, help="most training seconds per run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    host = machine()
    print(describe_machine(host), flush=True)
    splits, facts = real_splits()
    results = []
    for spec in args.recipes:
        for name in (spec, with_whitening(spec)):
            start = time.perf_counter()
            results.append(run_recipe(name, args.budget, splits, facts))
            results[-1]["wall_seconds_incl_eval"] = round(time.perf_counter() - start, 1)
    epochs = max(len(r["curve"]) for r in results)
    rows = [
        {
            "recipe": r["recipe"],
            "train s": r["train_seconds"],
            **{f"val {c['epoch']}": c["val_accuracy"] for c in r["curve"]},
            "test acc": r["test_accuracy"],
        }
        for r in results
    ]
    print(table(rows, ["recipe", "train s", *[f"val {e}" for e in range(1, epochs + 1)], "test acc"]))
    write_result("whitening", {"machine": host, "results": results})


if __name__ == "__main__":
    main()
