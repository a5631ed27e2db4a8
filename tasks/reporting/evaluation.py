"""Scoring a trained model on the untouched test split, and the files the ``evaluate`` stage makes of it.

:func:`evaluate_model` loads a model with its training records and predicts the test split (timed);
:func:`metrics_entry` is its headline in ``metrics/evaluate.json`` (test accuracy and loss, macro
precision/recall/F1, size, inference speed on this machine, training time); :func:`per_class_csv`
and :func:`confusion_csv` are ``plots/per_class/<model>.csv`` (per-class precision/recall/F1) and
``plots/confusion/<model>.csv`` (per-image actual/predicted for DVC's confusion template).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from tasks.core.errors import StageError
from tasks.core.params import EvaluateParams
from tasks.core.paths import outputs_for
from tasks.data.splits import Split
from tasks.model.epoch_log import read_history
from tasks.model import inference
from tasks.model.feed import feed
from tasks.model.models import load_model
from tasks.model.progress import EpochProgress
from tasks.reporting import classification

log = logging.getLogger(__name__)


@dataclass
class Evaluated:
    """One model's results: what the metrics file, the plots and the report are made of."""

    name: str
    probs: np.ndarray
    scores: dict[str, Any]
    speed: dict[str, float]
    training: dict[str, Any]
    meta: dict[str, Any]
    history: list[dict[str, Any]]
    #: The model's file size and its ONNX export's (:func:`export_check`): size, CPU speed, agreement.
    export: dict[str, float] = field(default_factory=dict)


def timed_predictions(
    model: keras.Model, x: np.ndarray, batch_size: int, repeats: int, label: str = "predict"
) -> tuple[np.ndarray, dict]:
    """Predict the whole split (timed, after a warm-up) and time single-image predictions."""
    # Compile and warm up before the clock starts, for the last, shorter batch too: under XLA
    # (JAX) each batch shape compiles once, which would otherwise land inside the timed predict.
    model.predict_on_batch(x[:batch_size])
    if len(x) % batch_size:
        model.predict_on_batch(x[: len(x) % batch_size])
    start = time.perf_counter()
    progress = EpochProgress(label, -(-len(x) // batch_size), batch_size, log)
    probs = model.predict(**feed(x, None, batch_size), verbose=0, callbacks=[progress])
    throughput = len(x) / (time.perf_counter() - start)
    one = x[:1]
    model.predict_on_batch(one)
    latencies = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.predict_on_batch(one)
        latencies.append(time.perf_counter() - t)
    return np.asarray(probs, dtype=np.float64), {
        "throughput_images_per_second": round(throughput, 1),
        "latency_ms_batch1": round(1000 * float(np.median(latencies)), 3),
    }


def evaluate_model(name: str, test: Split, class_names: list[str], params: EvaluateParams) -> Evaluated:
    out = outputs_for(name)
    try:
        model = load_model(out.model)
        training = json.loads(out.metrics.read_text())
        meta = json.loads(out.meta.read_text())
        history = read_history(out.history)
    except (FileNotFoundError, ValueError) as exc:
        raise StageError(
            f"{name}: cannot read the trained model or its records ({exc}); run the train_{name} stage first"
        ) from None
    probs, speed = timed_predictions(
        model, test.x, params.batch_size, params.latency_repeats, f"{name} test predictions"
    )
    scores = classification.summary(test.y, probs, class_names)
    log.info(
        "%s: test accuracy %.4f, loss %.4f, %.0f img/s, %.2f ms at batch 1",
        name,
        scores["test_accuracy"],
        scores["test_loss"],
        speed["throughput_images_per_second"],
        speed["latency_ms_batch1"],
    )
    return Evaluated(name, probs, scores, speed, training, meta, history, export_check(name, test, probs, params))


def export_check(name: str, test: Split, probs: np.ndarray, params: EvaluateParams) -> dict[str, float]:
    """The ONNX export of ``name`` on the test split, in onnxruntime on the CPU: its file size (and the
    ``.keras`` file's), speed (timed as the Keras model is) and how far its probabilities are from the Keras
    model's ``probs``."""
    path = outputs_for(name).export
    try:
        session = inference.load(path)
    except StageError as exc:
        raise StageError(f"{name}: {exc}; run the train_{name} stage first") from None
    batch, one = params.batch_size, test.x[:1]
    session.predict(test.x[:batch], batch)  # warm-up: onnxruntime plans its memory on the first run
    start = time.perf_counter()
    exported = session.predict(test.x, batch)
    throughput = len(test.x) / (time.perf_counter() - start)
    latencies = []
    for _ in range(params.latency_repeats):
        t = time.perf_counter()
        session.predict(one)
        latencies.append(time.perf_counter() - t)
    checked = {
        "model_file_mib": round(outputs_for(name).model.stat().st_size / 2**20, 2),
        "export_file_mib": round(path.stat().st_size / 2**20, 2),
        "export_throughput_images_per_second": round(throughput, 1),
        "export_latency_ms_batch1": round(1000 * float(np.median(latencies)), 3),
        "export_top1_agreement": round(float(np.mean(exported.argmax(1) == probs.argmax(1))), 5),
        "export_max_probability_difference": float(f"{np.abs(exported - probs).max():.2g}"),
    }
    log.info(
        "%s export: %.2f MiB, %.0f img/s, %.2f ms at batch 1, top-1 agreement %.4f, max difference %.1e",
        name,
        *list(checked.values())[1:],
    )
    return checked


def metrics_entry(result: Evaluated) -> dict[str, Any]:
    """What ``metrics/evaluate.json`` holds for one model (the confusion matrix goes to plots instead)."""
    s = result.scores
    return {
        "test_accuracy": round(s["test_accuracy"], 4),
        "test_loss": round(s["test_loss"], 4),
        "macro_precision": round(s["macro_precision"], 4),
        "macro_recall": round(s["macro_recall"], 4),
        "macro_f1": round(s["macro_f1"], 4),
        "params": result.training.get("params"),
        **result.speed,
        "train_seconds": result.training.get("train_seconds"),
        "epochs_run": result.training.get("epochs_run"),
        **result.export,
    }


def per_class_csv(per_class: dict[str, dict[str, float]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["class", "precision", "recall", "f1", "support"])
    for name, scores in per_class.items():
        writer.writerow([name, scores["precision"], scores["recall"], scores["f1"], scores["support"]])
    return buf.getvalue()


def confusion_csv(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["actual", "predicted"])
    for t, p in zip(y_true, probs.argmax(axis=1)):
        writer.writerow([class_names[t], class_names[p]])
    return buf.getvalue()
