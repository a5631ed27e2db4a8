"""``python -m tasks.predict IMAGES... [--model PATH | --artifact NAME [--stage S | --version V]] [--json]``:
classify pictures with a trained model.

IMAGES are PNG/JPEG files of any size or folders of them (tasks.data.pictures shrinks each to 32x32 as
CIFAR-10's images are). The model is, in this order: ``--model``, a ``.keras`` file or its ONNX export
(``models/<model>.onnx``); ``--artifact``, a model of the registry (dvc.yaml ``artifacts:``) fetched with
``dvc artifacts get`` -- the version assigned ``--stage`` (``gto assign``), ``--version``, or the latest;
or, with neither, the ONNX export of whichever model scored higher in this workspace's
``metrics/evaluate.json`` (so the first command after ``make pipeline`` needs no option). Prints the top
classes with their probabilities per picture, or one JSON object per line with ``--json``. A file that is
not a readable picture gets one ``error:`` line and the rest are still classified (exit status 1); a
missing or unreadable model is one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from tasks.core.errors import StageError
from tasks.core.paths import EVALUATE_METRICS, MODELS, outputs_for
from tasks.data.pictures import PictureError, expand, read_picture
from tasks.model import inference

EXIT_SOME_FAILED = 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tasks.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", type=Path, help="PNG/JPEG files or folders of them")
    parser.add_argument("--model", type=Path, help="a .keras model or its .onnx export")
    parser.add_argument("--artifact", help="a model of the registry instead: alexnet, vgg16, alexnet-onnx, ...")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--stage", help="with --artifact: the version assigned this stage, e.g. prod")
    which.add_argument("--version", help="with --artifact: this version, e.g. v1.2.0 (default: the latest)")
    parser.add_argument("--repo", default=".", help="with --artifact: the DVC project, a path or git URL (default .)")
    parser.add_argument("--json", action="store_true", help="one JSON object per picture")
    parser.add_argument("--top", type=int, default=3, help="how many classes to show (default 3)")
    args = parser.parse_args(argv)
    if args.model and args.artifact:
        parser.error("--model and --artifact name two models: give one")
    if (args.stage or args.version) and not args.artifact:
        parser.error("--stage and --version choose a version of an --artifact")
    return args


def top_classes(probs: np.ndarray, classifier: inference.Classifier, k: int) -> list[dict[str, object]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"class": classifier.label(int(i)), "probability": round(float(probs[i]), 4)} for i in order]


def default_model(root: Path = Path(".")) -> Path:
    """The ONNX export of the model with the higher test accuracy in ``root``'s evaluation metrics."""
    try:
        scores = json.loads((root / EVALUATE_METRICS).read_text())
    except (OSError, ValueError):
        raise StageError(
            f"no model named and no evaluation in {(root / EVALUATE_METRICS).resolve().parent.parent}: run the "
            "pipeline here first (make pipeline), or name one with --model PATH or --artifact NAME"
        ) from None
    ranked = sorted(
        (name for name in MODELS if (root / outputs_for(name).export).is_file()),
        key=lambda name: scores.get(name, {}).get("test_accuracy", -1.0),
        reverse=True,
    )
    if not ranked:
        raise StageError(f"no model named and no models/*.onnx in {root.resolve()}: run `dvc pull` or the pipeline")
    return root / outputs_for(ranked[0]).export


def fetch_artifact(name: str, stage: str | None, version: str | None, repo: str, folder: Path) -> Path:
    """``dvc artifacts get`` of ``name`` (at ``stage`` or ``version``) from ``repo`` into ``folder``."""
    choice = ["--stage", stage] if stage else ["--rev", version] if version else []
    out = folder / name
    got = subprocess.run(
        [sys.executable, "-m", "dvc", "artifacts", "get", repo, name, *choice, "-o", str(out), "--force"],
        capture_output=True,
        text=True,
    )
    if got.returncode != 0:
        # DVC's last ERROR line is the one that says why (an earlier one may be about Studio, tried first).
        said = next((ln for ln in reversed(got.stderr.splitlines()) if ln.startswith("ERROR")), got.stderr.strip())
        which = f"{name} at stage {stage}" if stage else f"{name} {version}" if version else name
        raise StageError(f"cannot fetch the registry's model {which} from {repo}: {said.removeprefix('ERROR: ')}")
    # A .keras model is a zip archive, an ONNX export a protobuf: the loader goes by the suffix.
    return out.rename(out.with_suffix(inference.KERAS_SUFFIX if zipfile.is_zipfile(out) else inference.ONNX_SUFFIX))


def load(args: argparse.Namespace, scratch: Path) -> inference.Classifier:
    if args.artifact:
        path = fetch_artifact(args.artifact, args.stage, args.version, args.repo, scratch)
    else:
        path = args.model or default_model()
        if not args.model:
            print(
                f"model: {path} (the better of this workspace's models; --model or --artifact for another)",
                file=sys.stderr,
            )
    return inference.load(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="predict-") as scratch:
        try:
            classifier = load(args, Path(scratch))
        except StageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return StageError.exit_status
        return classify(args, classifier)


def classify(args: argparse.Namespace, classifier: inference.Classifier) -> int:
    names, images, failed = [], [], 0
    for path in expand(args.images):
        try:
            images.append(read_picture(path))
            names.append(path)
        except PictureError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
    probs = classifier.predict(np.stack(images)) if images else np.zeros((0, 10), np.float32)
    for path, p in zip(names, probs):
        top = top_classes(p, classifier, max(1, args.top))
        if args.json:
            print(json.dumps({"image": str(path), "top": top}))
        else:
            print(f"{path}: " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in top))
    return EXIT_SOME_FAILED if failed else 0


if __name__ == "__main__":
    sys.exit(main())
