"""The evaluation report: ``reports/report.md`` plus a self-contained ``reports/report.html``.

Both are built from the same blocks (headings, tables, figures). The markdown links the PNGs in
``reports/figures/``; the HTML embeds them as data URIs and carries its own CSS, so it displays
offline from a single file.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks import classification, figures
from tasks.atomic import atomic_path, write_text
from tasks.params import EvaluateParams
from tasks.paths import FIGURES, REPORT_HTML, REPORT_MD
from tasks.preprocess import Split

if TYPE_CHECKING:
    from tasks.evaluate import Evaluated

#: The student report this project starts from (test accuracy; it early-stopped on the test set).
STUDENT = {"alexnet": 0.7912, "vgg16": 0.7862}
LABELS = {"alexnet": "AlexNet", "vgg16": "VGG16"}


@dataclass
class Block:
    """A piece of the report in both renderings."""

    md: str
    html: str


def heading(text: str, level: int = 2) -> Block:
    return Block(f"{'#' * level} {text}\n", f"<h{level}>{html.escape(text)}</h{level}>")


def paragraph(text: str) -> Block:
    return Block(f"{text}\n", f"<p>{html.escape(text)}</p>")


def table(headers: list[str], rows: list[list[Any]]) -> Block:
    md = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    md += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return Block("\n".join(md) + "\n", f"<table><tr>{head}</tr>{body}</table>")


def figure(name: str, png: bytes, caption: str, files: dict[str, bytes]) -> Block:
    files[name] = png
    data = base64.b64encode(png).decode()
    return Block(
        f"![{caption}](figures/{name})\n",
        f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>",
    )


def gallery(result: Evaluated, test: Split, class_names: list[str], k: int, files: dict[str, bytes]) -> Block:
    """The ``k`` most confident mistakes: image, true label, predicted label and confidence."""
    picks = classification.worst_mistakes(test.y, result.probs, k)
    md, cells = [], []
    for rank, i in enumerate(picks):
        name = f"mistake_{result.name}_{rank:02d}.png"
        png = figures.png_bytes(test.x[i], scale=3)
        files[name] = png
        pred = int(result.probs[i].argmax())
        caption = f"#{i}: true {class_names[test.y[i]]}, predicted {class_names[pred]} ({result.probs[i, pred]:.0%})"
        md.append(f"| ![{caption}](figures/{name}) | {caption} |")
        cells.append(
            f"<figure class='mistake'><img src='data:image/png;base64,{base64.b64encode(png).decode()}' "
            f"alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    if not md:
        return paragraph(f"{LABELS[result.name]} made no mistakes on the test split.")
    return Block(
        "| image | true / predicted |\n| --- | --- |\n" + "\n".join(md) + "\n",
        f"<div class='gallery'>{''.join(cells)}</div>",
    )


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def model_label(result: Evaluated) -> str:
    """The model's name as the report shows it; VGG16's says how its base started (vgg16.weights)."""
    if result.name != "vgg16":
        return LABELS[result.name]
    weights = str(result.meta.get("params", {}).get("weights", "imagenet"))
    if weights == "imagenet":
        return "VGG16 (ImageNet weights)"
    if weights == "none":
        return "VGG16 (random init)"
    return f"VGG16 (weights from {Path(weights).name})"


def title(results: list[Evaluated]) -> str:
    return "CIFAR-10: " + " vs ".join(
        "AlexNet from scratch" if r.name == "alexnet" else model_label(r) for r in results
    )


def comparison(results: list[Evaluated]) -> Block:
    rows = []
    for r in results:
        s, sp, t = r.scores, r.speed, r.training
        rows.append(
            [
                model_label(r),
                _pct(s["test_accuracy"]),
                f"{s['test_loss']:.4f}",
                f"{s['macro_f1']:.4f}",
                _pct(STUDENT[r.name]),
                f"{100 * (s['test_accuracy'] - STUDENT[r.name]):+.2f} pt",
                f"{t.get('params', 0):,}",
                t.get("epochs_run"),
                f"{t.get('train_seconds', 0):.0f} s",
                f"{sp['throughput_images_per_second']:.0f}",
                f"{sp['latency_ms_batch1']:.2f} ms",
            ]
        )
    return table(
        [
            "model",
            "test accuracy",
            "test loss",
            "macro F1",
            "student's test accuracy",
            "difference",
            "parameters",
            "epochs",
            "training time",
            "inference img/s",
            "latency (batch 1)",
        ],
        rows,
    )


def per_class(results: list[Evaluated], class_names: list[str]) -> Block:
    headers = ["class"] + [f"{LABELS[r.name]} {m}" for r in results for m in ("precision", "recall", "F1")]
    rows = [
        [c] + [f"{r.scores['per_class'][c][m]:.3f}" for r in results for m in ("precision", "recall", "f1")]
        for c in class_names
    ]
    return table(headers, rows)


def provenance(results: list[Evaluated], context: dict[str, Any]) -> list[Block]:
    blocks = [
        heading("What produced these numbers"),
        paragraph(
            f"Evaluated {context['evaluated']} on {context['devices']['host']} with the "
            f"{context['devices']['keras_backend']} backend ({', '.join(context['devices']['devices'])})."
        ),
        table(["package", "version"], sorted(context["packages"].items())),
    ]
    for r in results:
        params = json.dumps(r.meta.get("params", {}), indent=2)
        where = r.meta.get("devices", {})
        blocks.append(heading(f"{LABELS[r.name]} training params", 3))
        blocks.append(
            paragraph(
                f"Trained on {where.get('host', '?')} with {where.get('keras_backend', '?')} "
                f"({', '.join(where.get('devices', []))}), precision {r.meta.get('precision_policy')}."
            )
        )
        blocks.append(Block(f"```json\n{params}\n```\n", f"<pre>{html.escape(params)}</pre>"))
    return blocks


CSS = """body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:75rem;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:.5rem}
img{max-width:100%}.gallery figure{width:12rem;vertical-align:top}.gallery img{width:96px;image-rendering:pixelated}
figcaption{font-size:.8rem;color:#555}pre{background:#f7f7f7;padding:.5rem;overflow:auto;font-size:.8rem}"""


def build(
    results: list[Evaluated], test: Split, class_names: list[str], params: EvaluateParams, context: dict[str, Any]
) -> tuple[str, str, dict[str, bytes]]:
    """The markdown, the HTML and the figure files of the report."""
    files: dict[str, bytes] = {}
    rows = [dict(h, model=LABELS[r.name]) for r in results for h in r.history]
    blocks = [
        heading(title(results), 1),
        paragraph(
            f"Test split: {len(test.y)} images, never seen by training or model selection. The "
            "student's figures come from a notebook that early-stopped on the test set."
        ),
        heading("Comparison"),
        comparison(results),
        heading("Per class"),
        per_class(results, class_names),
        heading("Confusion matrices"),
    ]
    blocks += [
        figure(
            f"confusion_{r.name}.png",
            figures.render_png(
                figures.confusion_spec(
                    r.scores["confusion_matrix"], class_names, f"{LABELS[r.name]}: true class (rows) vs prediction"
                )
            ),
            f"{LABELS[r.name]} confusion matrix",
            files,
        )
        for r in results
    ]
    blocks.append(heading("Training curves"))
    if rows:
        for metric in ("accuracy", "loss"):
            blocks.append(
                figure(
                    f"curves_{metric}.png",
                    figures.render_png(
                        figures.curves_spec(rows, metric, f"{metric} per epoch (dashed: train, solid: validation)")
                    ),
                    f"{metric} curves",
                    files,
                )
            )
    for r in results:
        blocks.append(heading(f"Most confident mistakes: {LABELS[r.name]}"))
        blocks.append(gallery(r, test, class_names, params.worst_mistakes, files))
    blocks += provenance(results, context)
    md = "\n".join(b.md for b in blocks)
    page = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>CIFAR-10 report</title>"
        f"<style>{CSS}</style></head><body>{''.join(b.html for b in blocks)}</body></html>\n"
    )
    return md, page, files


def write(
    results: list[Evaluated], test: Split, class_names: list[str], params: EvaluateParams, context: dict[str, Any]
) -> None:
    md, page, files = build(results, test, class_names, params, context)
    FIGURES.mkdir(parents=True, exist_ok=True)
    for stale in FIGURES.glob("*.png"):
        if stale.name not in files:
            stale.unlink()
    for name, png in files.items():
        with atomic_path(FIGURES / name) as tmp:
            tmp.write_bytes(png)
    write_text(REPORT_MD, md)
    write_text(REPORT_HTML, page)
