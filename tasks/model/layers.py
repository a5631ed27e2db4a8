"""Custom Keras layers the models need and Keras lacks, written in ``keras.ops`` for every backend.

Registered as serialisable so a saved ``.keras`` model loads anywhere this module is importable
(:func:`tasks.model.models.load_model` imports it first).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

PACKAGE = "cifar10_pipeline"


@keras.saving.register_keras_serializable(package=PACKAGE)
class LocalResponseNormalization(keras.layers.Layer):
    """Across-channel LRN of the AlexNet paper (section 3.3): a / (k + alpha * sum a^2) ** beta.

    The sum runs over ``depth`` adjacent channels; defaults are the paper's (n=5, k=2, alpha=1e-4,
    beta=0.75). Parameter-free.
    """

    def __init__(self, depth: int = 5, k: float = 2.0, alpha: float = 1e-4, beta: float = 0.75, **kwargs: Any):
        super().__init__(**kwargs)
        self.depth, self.k, self.alpha, self.beta = depth, k, alpha, beta

    def call(self, inputs: Any) -> Any:
        half = self.depth // 2
        squared = ops.square(inputs)
        padded = ops.pad(squared, [[0, 0]] * (len(inputs.shape) - 1) + [[half, half]])
        channels = inputs.shape[-1]
        window = sum(padded[..., i : i + channels] for i in range(self.depth))
        return inputs / ops.power(self.k + self.alpha * window, self.beta)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "depth": self.depth, "k": self.k, "alpha": self.alpha, "beta": self.beta}


@keras.saving.register_keras_serializable(package=PACKAGE)
class VGGPreprocess(keras.layers.Layer):
    """``keras.applications.vgg16.preprocess_input`` as a layer: RGB 0..255 -> BGR minus the ImageNet mean."""

    MEAN_BGR = (103.939, 116.779, 123.68)

    def call(self, inputs: Any) -> Any:
        bgr = ops.flip(ops.cast(inputs, self.compute_dtype), axis=-1)
        return bgr - ops.convert_to_tensor(self.MEAN_BGR, dtype=self.compute_dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
class RandomPadCrop(keras.layers.Layer):
    """Training-only augmentation: zero-pad by ``padding`` and crop back at a random offset per image.

    The identity at inference, so the model's inference path keeps the input size (the
    ZeroPadding2D + RandomCrop pitfall). Implemented as a per-image integer shift, far cheaper on
    a CPU than the affine warp of ``RandomTranslation``.
    """

    def __init__(self, padding: int = 4, seed: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.padding = padding
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        if not training:
            return inputs
        p = self.padding
        batch = ops.shape(inputs)[0]
        h, w = inputs.shape[1], inputs.shape[2]
        padded = ops.pad(inputs, [[0, 0], [p, p], [p, p], [0, 0]])
        offsets = keras.random.randint((batch, 2), 0, 2 * p + 1, seed=self.seed_generator)
        # Each crop is a pair of 0/1 selection matrices applied by matmul: far faster on CPUs
        # (and no slower on GPUs) than a per-image gather.
        rows = ops.one_hot(ops.expand_dims(ops.arange(h), 0) + offsets[:, :1], h + 2 * p, dtype=inputs.dtype)
        cols = ops.one_hot(ops.expand_dims(ops.arange(w), 0) + offsets[:, 1:], w + 2 * p, dtype=inputs.dtype)
        picked = ops.einsum("bij,bjkc->bikc", rows, padded)
        return ops.einsum("bjk,bikc->bijc", cols, picked)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "padding": self.padding, "seed": self.seed}
