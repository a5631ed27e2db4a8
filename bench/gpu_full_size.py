"""The full-size experiment on a GPU host without DVC (a bare Python stack): the stages' own code, one folder a run.

Such GPU machines may have JAX and PyTorch but no TensorFlow, DVC, Prefect or Great Expectations,
so this script plays DVC's part by hand: it runs ``python -m tasks.download`` and
``tasks.preprocess`` once, then each run's training stage (``python -m tasks.train_<model>``) in
a folder of its own whose ``params.yaml`` is params.yaml + the run's overlays from configs/, and
scores the trained model on the test split with the evaluate stage's own functions (the HTML
report is not rendered: its figures need vl-convert, which is not on those machines).

The validation gate: where Great Expectations is installed the validate stage runs; elsewhere
``--validated DIR`` names a ``facts.json`` + ``validation.json`` pair that the validate stage wrote
on another machine from the same archive and params, and the prepared arrays here must have the
same SHA-256 digests as that ``facts.json`` -- the same reuse DVC's run-cache makes.

Runs, in priority order (each its own folder and result archive ``OUT/<run>.tgz``):

* ``alexnet``: params.yaml's defaults (paper AlexNet, full width, 30 epochs);
* ``vgg16``: VGG16 from random weights, configs/vgg16-scratch.yaml;
* ``student``: the student's recipe, configs/student.yaml, for as many epochs as ``--deadline`` leaves.

    KERAS_BACKEND=jax python bench/gpu_full_size.py --archive A --sha256 S --validated V --work W --out O
    KERAS_BACKEND=jax python bench/gpu_full_size.py --synthetic 2000 --set alexnet.epochs=1 ...  # rehearsal
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from statistics import median_low
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tasks.core.paths import outputs_for  # noqa: E402
from tools.overrides import load_overlay, merged  # noqa: E402

STUDENT_VAL_TARGET = 0.7912  # the student's AlexNet test accuracy, the bar for "time to 79.12 %"


@dataclass(frozen=True)
class Run:
    model: str
    overlays: tuple[str, ...]


RUNS = {
    "alexnet": Run("alexnet", ()),
    "vgg16": Run("vgg16", ("configs/vgg16-scratch.yaml",)),
    "student": Run("alexnet", ("configs/student.yaml",)),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_sets(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """``["alexnet.epochs=1"]`` -> ``{"alexnet": {"epochs": 1}}`` (values in YAML syntax)."""
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        section, dot, name = key.partition(".")
        if not (sep and dot and section and name):
            raise SystemExit(f"error: --set {pair!r}: expected section.key=value")
        out.setdefault(section, {})[name] = yaml.safe_load(value)
    return out


def child_env() -> dict[str, str]:
    """This environment with the repository first on the import path (carried wheels stay importable)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def stage(module: str, cwd: Path, log_file: Path) -> float:
    """Run ``python -m tasks.<module>`` in ``cwd`` (its output to ``log_file``); return wall seconds."""
    env = child_env()
    start = time.perf_counter()
    with open(log_file, "a") as fh:
        fh.write(f"$ python -m tasks.{module}\n")
        fh.flush()
        code = subprocess.call(
            [sys.executable, "-m", f"tasks.{module}"], cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT
        )
    seconds = time.perf_counter() - start
    if code != 0:
        tail = log_file.read_text().splitlines()[-15:]
        raise RuntimeError(f"tasks.{module} in {cwd} exited {code}:\n" + "\n".join(tail))
    return seconds


def write_params(folder: Path, params: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


# --------------------------------------------------------------------------- data


def prepare(base: Path, params: dict[str, Any], validated: Path | None, synthetic: bool) -> None:
    """download + preprocess in ``base``, then the validation gate (the stage, or a verified carried verdict)."""
    write_params(base, params)
    for module in ("download", "preprocess"):
        log(f"{module}: {stage(module, base, base / 'stage.log'):.1f} s")
    try:
        import great_expectations  # noqa: F401
    except ImportError:
        if synthetic:
            # Random images have no validated twin: the rehearsal passes the gate with a verdict marked as such.
            verdict = base / "reports/validation.json"
            verdict.parent.mkdir(parents=True, exist_ok=True)
            verdict.write_text(json.dumps({"success": True, "failed": [], "synthetic_rehearsal": True}))
            log("validate: synthetic rehearsal, gate passed without Great Expectations")
        else:
            carry_validation(base, validated)
    else:
        log(f"validate: {stage('validate', base, base / 'stage.log'):.1f} s")


def carry_validation(base: Path, validated: Path | None) -> None:
    if validated is None:
        raise SystemExit(
            "error: Great Expectations is not installed here: pass --validated DIR holding the "
            "facts.json and validation.json the validate stage wrote for the same archive and params"
        )
    here = json.loads((base / "data/prepared/facts.json").read_text())["sha256"]
    there = json.loads((validated / "facts.json").read_text())["sha256"]
    if here != there:
        raise SystemExit(
            f"error: the prepared arrays here differ from those validated in {validated} "
            f"(here {here}, there {there}); run the validate stage on these arrays"
        )
    verdict = base / "reports/validation.json"
    verdict.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(validated / "validation.json", verdict)
    log(f"validate: the arrays match {validated}/facts.json digest for digest; its verdict carried over")


def synthetic_archive(path: Path, per_batch: int) -> str:
    """A CIFAR-format archive of 5 x ``per_batch`` + ``per_batch`` random images, for rehearsals."""
    from tests.cifar_archive import make_archive

    return make_archive(path, per_batch=per_batch, n_test=per_batch, seed=0)


# --------------------------------------------------------------------------- runs


def run_params(base: dict[str, Any], run: Run, *layers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """params.yaml, then the run's overlays from configs/, then ``layers`` (command-line sets, ...)."""
    params = base
    for overlay in [load_overlay(REPO / o) for o in run.overlays] + list(layers):
        params = merged(params, overlay)
    return params


def train_and_score(name: str, run: Run, work: Path, params: dict[str, Any]) -> dict[str, Any]:
    folder = work / name
    if folder.exists():
        shutil.rmtree(folder)
    write_params(folder, params)
    for shared in ("data", "reports"):
        (folder / shared).symlink_to(work / "base" / shared, target_is_directory=True)
    train_seconds = stage(f"train_{run.model}", folder, folder / "stage.log")
    log(f"{name}: train_{run.model} stage {train_seconds:.1f} s (process start, compile, epochs, checkpoints)")
    env = child_env()
    with open(folder / "stage.log", "a") as fh:
        code = subprocess.call(
            [sys.executable, str(Path(__file__).resolve()), "--score", run.model],
            cwd=folder,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    if code != 0:
        raise RuntimeError(f"scoring {name} exited {code}; see {folder}/stage.log")
    summary = json.loads((folder / "metrics" / "summary.json").read_text())  # written by --score
    summary["stage_wall_seconds"] = round(train_seconds, 1)
    (folder / "metrics" / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def summarise(model: str, history: list[dict[str, Any]], test: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The figures the issue asks for, from the stage's own history, its run metadata and the test scores."""
    seconds = [h["seconds"] for h in history]
    steady = history[1:] or history  # the first epoch carries the compilation
    elapsed, reached = 0.0, None
    for h in history:
        elapsed += h["seconds"]
        if reached is None and h["val_accuracy"] >= STUDENT_VAL_TARGET:
            reached = {"epoch": int(h["epoch"]), "train_seconds": round(elapsed, 2)}
    return {
        "model": model,
        "precision_policy": meta.get("precision_policy"),
        "backend": meta["devices"]["keras_backend"],
        "devices": meta["devices"]["devices"],
        "batch_size": meta["params"]["batch_size"],
        "epochs_run": len(history),
        "first_epoch_seconds": seconds[0] if seconds else None,
        "median_epoch_seconds": round(median_low(h["seconds"] for h in steady), 3) if steady else None,
        "steady_images_per_second": round(median_low(h["images_per_second"] for h in steady), 1) if steady else None,
        "train_seconds": round(sum(seconds), 2),
        "best_val_accuracy": max((h["val_accuracy"] for h in history), default=None),
        "test_accuracy": test["test_accuracy"],
        "test_loss": test["test_loss"],
        "val_accuracy_79_12_reached": reached,
        "val_accuracy_per_epoch": [round(h["val_accuracy"], 4) for h in history],
    }


def score(model: str) -> None:
    """In a run folder: the evaluate stage's scoring of one model -> ``metrics/test_<model>.json`` and
    the run's ``metrics/summary.json``."""
    import logging

    from tasks.model.epoch_log import read_history
    from tasks.reporting.evaluation import evaluate_model, metrics_entry
    from tasks.core.params import load_evaluate_params
    from tasks.core.paths import PREPARED
    from tasks.data.splits import load_split

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    test = load_split("test", PREPARED)
    class_names = json.loads((PREPARED / "facts.json").read_text())["class_names"]
    result = evaluate_model(model, test, class_names, load_evaluate_params())
    test_scores = metrics_entry(result)
    Path(f"metrics/test_{model}.json").write_text(json.dumps(test_scores, indent=2))
    out = outputs_for(model)
    summary = summarise(model, read_history(out.history), test_scores, json.loads(out.meta.read_text()))
    Path("metrics/summary.json").write_text(json.dumps(summary, indent=2))


def pack(folder: Path, dest: Path) -> None:
    """The run's small records (metrics, history, run metadata, params, log) as one archive."""
    with tarfile.open(dest, "w:gz") as tar:
        for pattern in (
            "params.yaml",
            "stage.log",
            "metrics/*.json",
            "dvclive/*/metrics.json",
            "dvclive/*/plots/metrics/*.tsv",
            "models/*.meta.json",
        ):
            for path in sorted(folder.glob(pattern)):
                tar.add(path, arcname=f"{folder.name}/{path.relative_to(folder)}")


def student_epochs(remaining: float, alexnet: dict[str, Any] | None) -> int:
    """As many epochs of the student's recipe as the time left allows (at least 2, at most its 19).

    Batch 64 takes twice the steps of the default 128, so an epoch costs about twice the defaults' one;
    a minute is kept for process start, compilation and scoring.
    """
    per_epoch = 2.2 * (alexnet["median_epoch_seconds"] + 1.0) if alexnet else 10.0
    return max(2, min(19, int((remaining - 60.0) / per_epoch)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archive", type=Path, help="the CIFAR-10 python archive")
    ap.add_argument("--sha256", help="its SHA-256")
    ap.add_argument("--synthetic", type=int, metavar="N", help="rehearse on a random archive of N images per batch")
    ap.add_argument("--validated", type=Path, help="folder with facts.json + validation.json (no GX here)")
    ap.add_argument("--work", type=Path, default=Path("gpu_runs"))
    ap.add_argument("--out", type=Path, default=Path("gpu_runs/out"))
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--set", dest="sets", nargs="*", default=[], help="section.key=value for every run")
    ap.add_argument("--deadline", type=float, default=540.0, help="seconds this script may take in all")
    ap.add_argument("--score", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.score:
        return score(args.score)

    start = time.perf_counter()
    work, out = args.work.resolve(), args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if args.synthetic:
        archive = work / "synthetic.tar.gz"
        sha = synthetic_archive(archive, args.synthetic)
    elif args.archive and args.sha256:
        archive, sha = args.archive.resolve(), args.sha256
    else:
        raise SystemExit("error: give --archive and --sha256, or --synthetic N")

    sets = parse_sets(args.sets)
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    base["data"].update(url=str(archive), sha256=sha)
    base = merged(base, {k: v for k, v in sets.items() if k == "data"})
    prepare(work / "base", base, args.validated, synthetic=bool(args.synthetic))

    results: dict[str, Any] = {}
    for name in args.runs:
        run = RUNS[name]
        extra = {}
        remaining = args.deadline - (time.perf_counter() - start)
        if name == "student" and "epochs" not in sets.get("alexnet", {}):
            extra = {"alexnet": {"epochs": student_epochs(remaining, results.get("alexnet"))}}
        log(f"{name}: starting with {remaining:.0f} s of the deadline left")
        try:
            results[name] = train_and_score(name, run, work, run_params(base, run, sets, extra))
            log(f"{name}: {json.dumps(results[name])}")
        except RuntimeError as exc:
            results[name] = {"error": str(exc)}
            log(f"{name}: FAILED {exc}")
        if (work / name).exists():
            pack(work / name, out / f"{name}.tgz")
        (out / "summary.json").write_text(json.dumps(results, indent=2))
    log(f"all done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
