"""Figures for reports, rendered offline: Vega-Lite specs -> PNG through vl-convert, images -> PNG by hand.

No browser, no CDN, no matplotlib: vl-convert bundles Vega itself, and a CIFAR image is small
enough to encode as PNG with ``zlib``.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np


def png_bytes(image: np.ndarray, scale: int = 1) -> bytes:
    """Encode an (H, W, 3) uint8 image as PNG, optionally enlarged ``scale`` times (nearest neighbour)."""
    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[row].astype(np.uint8).tobytes() for row in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def render_png(spec: dict[str, Any], scale: float = 1.5) -> bytes:
    import vl_convert as vlc

    return vlc.vegalite_to_png(spec, scale=scale)


def confusion_spec(cm: list[list[int]], class_names: list[str], title: str) -> dict[str, Any]:
    """A heatmap with counts: rows are true classes, columns predictions."""
    values = [
        {"actual": class_names[t], "predicted": class_names[p], "count": int(n)}
        for t, row in enumerate(cm)
        for p, n in enumerate(row)
    ]
    axis = {"sort": class_names}
    dark = max(max(row) for row in cm) / 2  # white text on the darker half of the colour scale
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",  # an identifier, never fetched
        "title": title,
        "width": 320,
        "height": 320,
        "data": {"values": values},
        "encoding": {
            "x": {"field": "predicted", "type": "nominal", **axis},
            "y": {"field": "actual", "type": "nominal", **axis},
        },
        "layer": [
            {
                "mark": "rect",
                "encoding": {"color": {"field": "count", "type": "quantitative", "scale": {"scheme": "blues"}}},
            },
            {
                "mark": {"type": "text", "fontSize": 9},
                "encoding": {
                    "text": {"field": "count", "type": "quantitative"},
                    "color": {"condition": {"test": f"datum.count > {dark}", "value": "white"}, "value": "black"},
                },
            },
        ],
    }


def curves_spec(rows: list[dict[str, Any]], metric: str, title: str) -> dict[str, Any]:
    """Train and validation ``metric`` per epoch, one colour per model, dashed for train."""
    values = [
        {"epoch": r["epoch"], "model": r["model"], "split": split, "value": r[f"{split}_{metric}"]}
        for r in rows
        for split in ("train", "val")
    ]
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": title,
        "width": 420,
        "height": 260,
        "data": {"values": values},
        "mark": {"type": "line", "point": True},
        "encoding": {
            "x": {"field": "epoch", "type": "quantitative"},
            "y": {"field": "value", "type": "quantitative", "title": metric, "scale": {"zero": False}},
            "color": {"field": "model", "type": "nominal"},
            "strokeDash": {
                "field": "split",
                "type": "nominal",
                "scale": {"domain": ["train", "val"], "range": [[5, 3], [1, 0]]},
            },
        },
    }
