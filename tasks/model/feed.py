"""What ``model.fit``, ``evaluate`` and ``predict`` are fed: in-memory arrays, batched in the way
that costs least on the Keras backend in use.

On TensorFlow, Keras wraps arrays in a tf.data pipeline with tf.data's autotuner on, and tearing
that pipeline down at the end of each ``fit``/``evaluate``/``predict`` call blocks until the
autotuner's next tick: measured on a 2-core AMD EPYC, one ``fit`` per epoch of 11,264 images spent
0.3 to 5.1 s after its last batch, the same pipeline with autotuning off 0.00 s
(docs/benchmarks.md). The training loop calls ``fit`` and ``evaluate`` once per epoch, so that wait
was paid twice an epoch. Here the pipeline is built with autotuning off; other backends get the
arrays as they are.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np


def feed(x: np.ndarray, y: np.ndarray | None, batch_size: int) -> dict[str, Any]:
    """Keyword arguments for ``model.fit``/``evaluate`` (with ``y``) or ``predict`` (``y=None``):
    the data in order, in batches of ``batch_size`` (the last one shorter)."""
    if keras.backend.backend() != "tensorflow":
        return {"x": x, "batch_size": batch_size} | ({"y": y} if y is not None else {})
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y)).batch(batch_size)
    options = tf.data.Options()
    options.autotune.enabled = False
    return {"x": data.with_options(options).prefetch(1)}
