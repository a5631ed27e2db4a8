"""``python -m tasks.predict IMAGES... --model PATH [--json] [--top K]``: classify pictures with a trained model.

IMAGES are PNG/JPEG files of any size or folders of them (tasks.data.pictures shrinks each to 32x32 as
CIFAR-10's images are); the model is a ``.keras`` file or its ONNX export (``models/<model>.onnx``).
Prints the top classes with their probabilities per picture, or one JSON object per line with
``--json``. A file that is not a readable picture gets one ``error:`` line and the rest are still
classified (exit status 1); a missing or unreadable model is one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from tasks.core.errors import StageError
from tasks.data.pictures import PictureError, expand, read_picture
from tasks.model import inference

EXIT_SOME_FAILED = 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tasks.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", type=Path, help="PNG/JPEG files or folders of them")
    parser.add_argument("--model", required=True, type=Path, help="a .keras model or its .onnx export")
    parser.add_argument("--json", action="store_true", help="one JSON object per picture")
    parser.add_argument("--top", type=int, default=3, help="how many classes to show (default 3)")
    return parser.parse_args(argv)


def top_classes(probs: np.ndarray, classifier: inference.Classifier, k: int) -> list[dict[str, object]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"class": classifier.label(int(i)), "probability": round(float(probs[i]), 4)} for i in order]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        classifier = inference.load(args.model)
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return StageError.exit_status
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
