"""Time-to-accuracy on the real CIFAR-10: the project's CPU recipes for both models against one epoch of the student's.

All run through the project's own training loop (:func:`tasks.model.train.epochs`) with the training
stages' own models and phases, on the same split the pipeline makes, on this machine, one after the
other; each runs its epochs or stops after the epoch that uses up ``--budget``. The table gives
validation accuracy against cumulative training time and the final test accuracy of each.

    python bench/bench_time_to_accuracy.py --recipes quick-cpu vgg16/quick-cpu quick-cpu-half vgg16/quick-cpu-half

A recipe is ``[MODEL/]CONFIG[:KEY=VALUE,...]``: a file in configs/ overlaid on params.yaml's section
of MODEL (``alexnet`` when not named, or ``vgg16``), optionally with changes to that section:
``vgg16/quick-cpu:crop_padding=2,epochs=8``. The student's AlexNet recipe always runs, for one epoch,
so every accuracy-in-time figure is stated against the wall time of one of its epochs on this
machine, in this run (the yardstick: the quick setting should pass 85 % within one student epoch
and 81 % within half of one). The output starts with the processor and its matmul rates.
Writes bench/results/time_to_accuracy_<budget>s.json.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import yaml
from common import describe_machine, machine, real_splits, recipe_params, table, write_result

from tasks import train_alexnet, train_vgg16
from tasks.core import devices, runinfo
from tasks.model import train
from tasks.model.checkpoints import Checkpoints
from tasks.model.models import for_inference


#: The test-time augmentations the saved model may carry (tasks.model.models.for_inference).
TTA_KINDS = ("none", "flip", "flip_translate")
#: What trains each model: the training stage's own ``build(params, facts)`` and ``phases(params)``.
STAGES: dict[str, ModuleType] = {"alexnet": train_alexnet, "vgg16": train_vgg16}


def parse_recipe(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``quick-cpu``, ``vgg16/quick-cpu`` or ``quick-cpu:crop_padding=4,epochs=12`` -> the model, the
    config and the changes to the model's section (values read as YAML), so a probe of one knob needs no
    file of its own."""
    recipe, _, changes = spec.partition(":")
    model, _, config = recipe.rpartition("/")
    model = model or "alexnet"
    pairs = [item.split("=", 1) for item in changes.split(",") if item]
    if model not in STAGES or not config or any(len(pair) != 2 for pair in pairs):
        raise SystemExit(f"--recipes {spec}: expected [{'|'.join(STAGES)}/]CONFIG[:KEY=VALUE,...]")
    return model, config, {key.strip(): yaml.safe_load(value) for key, value in pairs}


def run_recipe(name: str, budget: float, splits: dict, facts: dict) -> dict:
    model_name, config, changes = parse_recipe(name)
    params = recipe_params(config, model_name, **changes)
    stage = STAGES[model_name]
    train.set_precision(params.recipe, devices.describe())
    with tempfile.TemporaryDirectory() as tmp:
        # The stage's own loop, stopped after the epoch that uses up the budget.
        checkpoints, recipe = Checkpoints(Path(tmp), name), params.recipe
        model, state = train.start(lambda: stage.build(params, facts), recipe, splits["train"], checkpoints, name)
        data = (splits["train"], splits["val"], checkpoints)
        for _ in train.epochs(name, model, state, stage.phases(params), recipe, *data):
            if sum(h["seconds"] for h in state.history) >= budget:
                break
        train.restore_best(model, state, recipe, checkpoints)
    test, val = splits["test"], splits["val"]

    def accuracy_of(m: Any, split: Any) -> float:
        return float(np.mean(np.argmax(m.predict(split.x, batch_size=512, verbose=0), axis=1) == split.y))

    # Test accuracy of the model as the stage saves it (test-time augmentation included), and without; the
    # choice of test-time augmentation is made on the validation split, so each kind is scored there too.
    saved = for_inference(model, params.test_time_augmentation)
    accuracy = {"saved": accuracy_of(saved, test), "plain": accuracy_of(model, test)}
    val_by_tta = {kind: round(accuracy_of(for_inference(model, kind), val), 4) for kind in TTA_KINDS}
    elapsed = 0.0
    curve = []
    for h in state.history:
        elapsed += h["seconds"]
        curve.append(
            {"epoch": h["epoch"], "train_seconds": round(elapsed, 1), "val_accuracy": round(h["val_accuracy"], 4)}
        )
    return {
        "recipe": name,
        "model": model_name,
        "params": runinfo.as_dict(params),
        "curve": curve,
        "train_seconds": round(elapsed, 1),
        "epochs": len(state.history),
        "best_val_accuracy": round(state.best_val_accuracy, 4),
        "test_time_augmentation": params.test_time_augmentation,
        "test_accuracy": round(accuracy["saved"], 4),
        "test_accuracy_without_tta": round(accuracy["plain"], 4),
        "val_accuracy_by_test_time_augmentation": val_by_tta,
    }


def best_within(curve: list[dict], seconds: float) -> float | None:
    """The best validation accuracy of the epochs that ended within ``seconds`` of training."""
    reached = [c["val_accuracy"] for c in curve if c["train_seconds"] <= seconds]
    return max(reached) if reached else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=900.0, help="most training seconds per recipe (student: 1 epoch)")
    ap.add_argument(
        "--recipes", nargs="+", default=["quick-cpu", "vgg16/quick-cpu", "quick-cpu-half", "vgg16/quick-cpu-half"]
    )
    ap.add_argument(
        "--no-yardstick", action="store_true", help="skip the student's epoch (recipe probes: no within-epoch figures)"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    host = machine()
    print(describe_machine(host), flush=True)
    splits, facts = real_splits()
    # The student's recipe runs one epoch (budget 0): the yardstick every other figure is stated against.
    plan = [(name, args.budget) for name in args.recipes if name != "student"]
    if not args.no_yardstick:
        plan.append(("student", 0.0))
    results = []
    for name, budget in plan:
        start = time.perf_counter()
        results.append(run_recipe(name, budget, splits, facts))
        results[-1]["wall_seconds_incl_eval"] = round(time.perf_counter() - start, 1)
    yardstick = [r["curve"][0]["train_seconds"] for r in results if r["recipe"] == "student"]
    student_epoch = yardstick[0] if yardstick else None
    for r in results:
        r["best_val_within_one_student_epoch"] = best_within(r["curve"], student_epoch) if student_epoch else None
        r["best_val_within_half_a_student_epoch"] = (
            best_within(r["curve"], student_epoch / 2) if student_epoch else None
        )
    rows = [
        {
            "recipe": r["recipe"],
            "epochs": r["epochs"],
            "train s": r["train_seconds"],
            "best val acc": r["best_val_accuracy"],
            "test acc": r["test_accuracy"],
            "test acc w/o TTA": r["test_accuracy_without_tta"],
            **{f"val {k}": v for k, v in r["val_accuracy_by_test_time_augmentation"].items()},
            "val in 1 student epoch": r["best_val_within_one_student_epoch"],
            "val in 1/2": r["best_val_within_half_a_student_epoch"],
        }
        for r in results
    ]
    if student_epoch:
        print(f"one epoch of the student's recipe here: {student_epoch:.0f} s of training")
    columns = ["recipe", "epochs", "train s", "best val acc", "test acc", "test acc w/o TTA"]
    columns += [f"val {k}" for k in TTA_KINDS]
    print(table(rows, [*columns, "val in 1 student epoch", "val in 1/2"]))
    for r in results:
        print(
            f"\n{r['recipe']}: " + ", ".join(f"{c['train_seconds']:.0f}s {c['val_accuracy']:.3f}" for c in r["curve"])
        )
    record = {
        "machine": host,
        "budget_seconds": args.budget,
        "student_epoch_seconds": student_epoch,
        "results": results,
    }
    # Probes without the yardstick keep their own file, so they never replace a record the docs quote.
    write_result("time_to_accuracy_probe" if args.no_yardstick else f"time_to_accuracy_{int(args.budget)}s", record)


if __name__ == "__main__":
    main()
