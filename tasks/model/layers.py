"""Custom Keras layers the models need and Keras lacks, written in ``keras.ops`` for every backend
(``FusedBatchNormalization`` adds a TensorFlow fast path to Keras' own layer and falls back to it).

Registered as serialisable so a saved ``.keras`` model loads anywhere this module is importable
(:func:`tasks.model.models.load_model` imports it first).
"""

from __future__ import annotations

import math
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


def _sampling_matrix(coords: Any, size: int, interpolation: str) -> Any:
    """Weights (..., size) that read position ``coords`` (...) of an axis of ``size`` pixels:
    one-hot (``nearest``) or two neighbours weighted linearly (``bilinear``). Indices are clamped to
    the axis: fill mode "nearest", the edge pixel repeated, as scipy and Keras do it."""
    if interpolation == "nearest":
        return ops.one_hot(ops.clip(ops.cast(ops.round(coords), "int32"), 0, size - 1), size, dtype="float32")
    floor = ops.floor(coords)
    frac = ops.expand_dims(coords - floor, -1)
    low = ops.cast(floor, "int32")
    below = ops.one_hot(ops.clip(low, 0, size - 1), size, dtype="float32")
    above = ops.one_hot(ops.clip(low + 1, 0, size - 1), size, dtype="float32")
    return below * (1.0 - frac) + above * frac


def _materialise(x: Any) -> Any:
    """``x`` computed once. XLA would otherwise fuse a shifter stage into both of the next stage's
    reads of it and recompute it, doubling the work at every stage; an optimisation barrier is the
    identity and only stops that fusion (JAX; TensorFlow runs the ops as written unless it compiles)."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.lax.optimization_barrier(x)
    return x


def _edge_pad(x: Any, axis: int, before: int, after: int) -> Any:
    """Pad ``x`` along ``axis`` by repeating its first and last slices: fill mode "nearest"."""
    n = x.shape[axis]
    first = ops.take(x, ops.convert_to_tensor([0] * before, "int32"), axis=axis)
    last = ops.take(x, ops.convert_to_tensor([n - 1] * after, "int32"), axis=axis)
    return ops.concatenate([first, x, last], axis=axis)


def _shift_lines(x: Any, axis: int, out_len: int, offset: int, shift: Any, reach: float, interpolation: str) -> Any:
    """Resample ``x`` along ``axis``: output index j reads ``j + offset + shift``, where ``shift``
    (broadcastable to the output, size 1 along ``axis``) varies per image and per line but never
    exceeds ``reach`` in size.

    The whole part of each line's shift is applied bit by bit, as a barrel shifter does: stage k
    selects, per line, between the image and itself moved by 2**k pixels (a static slice), so
    ``log2`` of the shifts in reach stages suffice; ``bilinear`` then blends each pixel with its
    neighbour by the fractional part. No gather and no coordinate grid: elementwise work only.
    """
    lo, hi = -math.ceil(reach), math.ceil(reach)
    stages = max(1, math.ceil(math.log2(hi - lo + 1)))
    extra = 1 if interpolation == "bilinear" else 0  # the right-hand neighbour of the blend
    length = out_len + extra + 2**stages - 1
    before = max(0, -(offset + lo))
    after = max(0, offset + lo + length - x.shape[axis])
    padded = _edge_pad(x, axis, before, after)
    start = offset + lo + before
    z = padded[(slice(None),) * axis + (slice(start, start + length),)]
    whole = ops.floor(shift) if interpolation == "bilinear" else ops.round(shift)
    steps = ops.cast(whole - lo, "int32")  # 0 .. hi - lo

    def window(t: Any, begin: int, size: int) -> Any:
        return t[(slice(None),) * axis + (slice(begin, begin + size),)]

    for k in range(stages):
        length -= 2**k
        moved = ops.equal(ops.mod(ops.floor_divide(steps, 2**k), 2), 1)
        z = _materialise(ops.where(moved, window(z, 2**k, length), window(z, 0, length)))
    if interpolation == "nearest":
        return z
    frac = shift - whole
    return (1.0 - frac) * window(z, 0, out_len) + frac * window(z, 1, out_len)


@keras.saving.register_keras_serializable(package=PACKAGE)
class RandomAffineWarp(keras.layers.Layer):
    """Training-only augmentation of ``ImageDataGenerator(rotation_range, width_shift_range,
    height_shift_range, horizontal_flip)``: per image a rotation uniform in +-``rotation`` degrees
    about the centre, a shift uniform in +-``width_shift``/``height_shift`` of the image's size, a
    horizontal flip with probability 1/2, fill mode "nearest". The identity at inference.

    The warp is computed without a per-pixel coordinate gather (what ``keras.layers.RandomRotation``
    does through ``affine_transform``, a ``map_coordinates`` under ``vmap`` on JAX, slow on
    accelerators): the rotation is factored into three shears (Paeth: R(t) = Sx(-tan t/2) Sy(sin t)
    Sx(-tan t/2)), each a 1-D shift of every row (or column) by its own amount, done by
    :func:`_shift_lines` as a barrel shifter of static slices and selects -- elementwise work only.
    The shift is folded into the first pass as selection-matrix matmuls (one matrix per image, as
    :class:`RandomPadCrop` crops); the mirror is applied last. Output pixel p reads the
    input at R (F p + t) (F the mirror, t the shift, R the rotation), as ImageDataGenerator's
    transform does. The intermediate images are padded so that no pass clips what a later one
    reads back: only the first pass reads past the input's edge, and it repeats the edge pixels,
    the same fill as clamping each output pixel's source coordinate.

    ``bilinear`` (ImageDataGenerator's and Keras' interpolation) interpolates linearly in each 1-D
    pass; ``nearest`` rounds each pass's shift (Paeth's rotation, exact on the pixel grid).
    """

    def __init__(
        self,
        rotation: float = 20.0,
        width_shift: float = 0.2,
        height_shift: float = 0.2,
        horizontal_flip: bool = True,
        interpolation: str = "bilinear",
        seed: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if not 0.0 <= rotation <= 90.0:
            raise ValueError(f"rotation must be 0..90 degrees (the three-shear factorisation), got {rotation}")
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")
        self.rotation, self.width_shift, self.height_shift = rotation, width_shift, height_shift
        self.horizontal_flip, self.interpolation, self.seed = horizontal_flip, interpolation, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _canvas(self, h: int, w: int) -> tuple[int, int]:
        """Heights/widths of the intermediate images: what the later passes read, plus one pixel."""
        half = math.radians(self.rotation) / 2
        cx, cy = (w - 1) / 2, (h - 1) / 2
        pad_w = math.ceil(math.tan(half) * cy) + 1
        pad_h = math.ceil(math.sin(2 * half) * (cx + pad_w)) + 1
        return h + 2 * pad_h, w + 2 * pad_w

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        if not training:
            return inputs
        h, w = inputs.shape[1], inputs.shape[2]
        h1, w1 = self._canvas(h, w)
        batch = ops.shape(inputs)[0]
        gen = self.seed_generator
        theta = keras.random.uniform((batch,), -1.0, 1.0, seed=gen) * math.radians(self.rotation)
        shift_y = keras.random.uniform((batch,), -1.0, 1.0, seed=gen) * (self.height_shift * h)
        shift_x = keras.random.uniform((batch,), -1.0, 1.0, seed=gen) * (self.width_shift * w)
        a, b = -ops.tan(theta / 2), ops.sin(theta)  # the two x shears, the y shear
        # ImageDataGenerator shifts before it rotates (source = R (p + t)), so the shift the first
        # pass applies in source coordinates is R t.
        cos, sin = ops.cos(theta), ops.sin(theta)
        sx, sy = cos * shift_x - sin * shift_y, sin * shift_x + cos * shift_y

        def line(n: int) -> Any:  # pixel centres of an axis of n pixels, relative to its middle
            return ops.arange(n, dtype="float32") - (n - 1) / 2

        def per(v: Any, lines: Any = None, axis: int = 1) -> Any:  # (batch,) [x (lines,)] -> broadcastable
            v = ops.reshape(v, (-1, 1, 1, 1))
            return v if lines is None else v * ops.reshape(lines, (1, -1, 1, 1) if axis == 1 else (1, 1, -1, 1))

        def shift(x: Any, axis: int, out_len: int, d: Any, bound: float) -> Any:
            offset = (x.shape[axis] - out_len) // 2  # canvases share the image's centre and parity
            return _shift_lines(x, axis, out_len, offset, d, bound, self.interpolation)

        x = ops.cast(inputs, "float32")
        tan_half, sin_full = math.tan(math.radians(self.rotation) / 2), math.sin(math.radians(self.rotation))
        # Pass 1, canvas (wy, wx) <- input (wy + sy, wx + a wy + sx), the only pass that reads past the
        # input's edge (clamped). Its per-image parts -- the row shift sy and the whole pixels of sx --
        # are selection-matrix matmuls (cheap: one matrix per image); the per-row rest is a shear.
        shear_reach = tan_half * (h1 - 1) / 2 + 0.5
        wide = w1 + 2 * math.ceil(shear_reach)
        rows = line(h1)[None, :] + ops.reshape(sy, (-1, 1)) + (h - 1) / 2
        x = ops.einsum("bih,bhwc->biwc", _sampling_matrix(rows, h, self.interpolation), x)
        whole = ops.round(sx)
        cols = line(wide)[None, :] + ops.reshape(whole, (-1, 1)) + (w - 1) / 2
        x = ops.einsum("bjw,biwc->bijc", _sampling_matrix(cols, w, "nearest"), x)
        x = _materialise(shift(x, 2, w1, per(a, line(h1)) + per(sx - whole), shear_reach))
        # Pass 2, per column: (uy, ux) <- canvas (uy + b ux, ux).
        x = _materialise(shift(x, 1, h, per(b, line(w1), axis=2), sin_full * (w1 - 1) / 2))
        # Pass 3: (py, px) <- (py, px + a py); then the mirror, which ImageDataGenerator applies last.
        x = shift(x, 2, w, per(a, line(h)), tan_half * (h - 1) / 2)
        if self.horizontal_flip:
            mirror = ops.reshape(keras.random.uniform((batch,), seed=gen) < 0.5, (-1, 1, 1, 1))
            x = ops.where(mirror, ops.flip(x, axis=2), x)
        return ops.cast(x, inputs.dtype)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "rotation": self.rotation,
            "width_shift": self.width_shift,
            "height_shift": self.height_shift,
            "horizontal_flip": self.horizontal_flip,
            "interpolation": self.interpolation,
            "seed": self.seed,
        }


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


def averaged_views(model: Any, views: list[Any], weights: list[float]) -> Any:
    """The weighted sum of ``model``'s outputs for each of ``views`` (batches of the same images), from one
    call on all of them stacked: one copy of the network in a traced or exported graph instead of one
    per view. Inference only, where a batch's images do not affect each other."""
    outputs = model(ops.concatenate(views, axis=0), training=False)
    per_view = ops.reshape(outputs, (len(views), -1, *outputs.shape[1:]))
    weight = ops.reshape(ops.convert_to_tensor(weights, dtype=outputs.dtype), (len(views), 1, 1))
    return ops.sum(per_view * weight, axis=0)


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
        return averaged_views(self.layer, [inputs, ops.flip(inputs, axis=2)], [0.5, 0.5])  # NHWC: axis 2 is width

    def compute_output_shape(self, input_shape: Any) -> Any:
        return self.layer.compute_output_shape(input_shape)


@keras.saving.register_keras_serializable(package=PACKAGE)
class TestTimeFlipTranslate(keras.layers.Wrapper):
    """Test-time augmentation of the fastest CIFAR-10 trainers (airbench): at inference, the wrapped
    model's class probabilities averaged over the image and its mirror image (weight 1/2) and over
    the image shifted one pixel up-left and one pixel down-right, each with its mirror (1/4 each);
    the shifted views fill the uncovered row and column by reflection.

    Training passes straight through, so only the saved inference model is wrapped.
    """

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        if training:
            return self.layer(inputs, training=True)
        h, w = inputs.shape[1], inputs.shape[2]
        padded = ops.pad(inputs, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="reflect")
        views = [inputs, padded[:, :h, :w], padded[:, 2 : h + 2, 2 : w + 2]]
        views = [v for view in views for v in (view, ops.flip(view, axis=2))]  # NHWC: axis 2 is the width
        return averaged_views(self.layer, views, [0.25, 0.25, 0.125, 0.125, 0.125, 0.125])

    def compute_output_shape(self, input_shape: Any) -> Any:
        return self.layer.compute_output_shape(input_shape)
