"""Custom Keras layers the models need and Keras lacks, written in ``keras.ops`` for every backend
(``FusedBatchNormalization`` adds a TensorFlow fast path to Keras' own layer and falls back to it).

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


@keras.saving.register_keras_serializable(package=PACKAGE)
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` whose training step on TensorFlow is one fused kernel.

    Keras 3 normalises a batch with about ten separate element-wise ops (moments, then scale and
    shift) and as many in the gradient; TensorFlow's ``FusedBatchNormV3`` and its gradient do the
    same in one pass each. At the CPU recipe's width most of a step outside the matmuls went there
    (measured in docs/benchmarks.md). Same weights, same float32 statistics (inputs are cast to
    float32 first, as Keras does), same moving averages; every other case -- inference, other
    backends, masks, renorm, synchronised statistics -- is Keras' own code.
    """

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        rank = len(inputs.shape)
        fused = (
            keras.backend.backend() == "tensorflow"
            and bool(training)
            and self.trainable
            and mask is None
            and not self.renorm
            and not self.synchronized
            and rank in (2, 4)
            and self.axis in (-1, rank - 1)
        )
        if not fused:
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = tf.cast(inputs, tf.float32)
        x = x if rank == 4 else x[:, None, None, :]  # the fused kernel wants NHWC
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True
        )
        # The kernel returns the unbiased batch variance; Keras keeps the biased one.
        count = tf.cast(tf.size(x) // channels, tf.float32)
        variance = variance * (count - 1.0) / count
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + ops.cast(mean, self.moving_mean.dtype) * (1.0 - m))
        self.moving_variance.assign(
            self.moving_variance * m + ops.cast(variance, self.moving_variance.dtype) * (1.0 - m)
        )
        y = y if rank == 4 else y[:, 0, 0, :]
        return ops.cast(y, self.compute_dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
class TestTimeFlip(keras.layers.Wrapper):
    """Test-time augmentation: at inference, the wrapped model's class probabilities for an image
    averaged with those for its mirror image (the horizontal flip it was trained with).

    Training passes straight through, so only the saved inference model is wrapped. On the CPU
    recipe this was worth about 1.3 points of test accuracy for twice the inference work.
    """

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        if training:
            return self.layer(inputs, training=True)
        mirrored = ops.flip(inputs, axis=2)  # NHWC: axis 2 is the image's width
        return (self.layer(inputs, training=False) + self.layer(mirrored, training=False)) / 2.0

    def compute_output_shape(self, input_shape: Any) -> Any:
        return self.layer.compute_output_shape(input_shape)
