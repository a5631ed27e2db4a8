"""Patch-whitening initialisation of a model's first convolution (``whiten_conv1`` in params.yaml).

The first convolution's filters are set from the eigen-decomposition of the covariance of image patches
of its own size, taken from training images in the space the convolution reads (after the model's own
scaling and normalisation, augmentation being the identity as at inference): each filter is an
eigenvector ``v`` scaled by ``1 / sqrt(eigenvalue + eps)``, so the convolution maps patches to
uncorrelated unit-variance features, the largest components first. As in Keller Jordan's
cifar10-airbench, every component comes twice, ``+v`` and ``-v``, so that the ReLU after the convolution
keeps both signs of it. A convolution with fewer filters than twice the patch dimension ``kh*kw*c``
keeps the top ``filters // 2`` components; one with more keeps its initialiser's values in the filters
beyond ``2*kh*kw*c`` (and in the odd one out). Where the convolution has a bias, the whitened filters'
bias subtracts the patch mean, so their outputs are centred as well.

The weights are only a starting point: the convolution trains with the rest of the model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import keras
import numpy as np

log = logging.getLogger(__name__)

#: ``eps`` relative to the mean eigenvalue: it damps components with almost no variance (in
#: airbench's normalised pixel space, whose mean eigenvalue is about 1, it is airbench's 5e-4).
EPS = 5e-4
#: Training images whose patches are counted (airbench counts 5,000).
SAMPLE_IMAGES = 5000
#: Patches taken from each image at most, a random subset of its positions: plenty for a covariance of
#: 27 (3x3) or 75 (5x5) dimensions, and the cost stays flat for inputs upscaled inside the model.
PATCHES_PER_IMAGE = 128
#: Images per batch through the model's preprocessing.
BATCH = 256


def patches(images: np.ndarray, size: tuple[int, int], per_image: int | None = None, seed: int = 0) -> np.ndarray:
    """Every ``size`` patch of NHWC ``images`` (or ``per_image`` random ones of each) as rows of
    ``kh*kw*c`` numbers, in the order of a Keras ``Conv2D`` kernel's first three axes."""
    kh, kw = size
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] < kh or x.shape[2] < kw:
        raise ValueError(f"expected NHWC images of at least {kh}x{kw} pixels, got shape {x.shape}")
    # (n, rows, cols, c, kh, kw) -> (n, rows, cols, kh, kw, c): the kernel's (kh, kw, c) order.
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2)).transpose(0, 1, 2, 4, 5, 3)
    n, rows, cols = windows.shape[:3]
    windows = windows.reshape(n, rows * cols, kh * kw * x.shape[3])
    if per_image is not None and per_image < rows * cols:
        picks = np.argsort(np.random.default_rng(seed).random((n, rows * cols)), axis=1)[:, :per_image]
        windows = np.take_along_axis(windows, picks[:, :, None], axis=1)
    return windows.reshape(-1, windows.shape[-1])


def patch_covariance(
    images: np.ndarray | Iterable[np.ndarray], size: tuple[int, int], per_image: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of the ``size`` patches of ``images`` -- an NHWC array or an iterable of them
    (batches), summed in float64 so a large sample needs no more memory than one batch."""
    batches = [images] if isinstance(images, np.ndarray) else images
    count, total, outer = 0, None, None
    for i, batch in enumerate(batches):
        rows = patches(batch, size, per_image, seed + i).astype(np.float64)
        if total is None:
            total, outer = np.zeros(rows.shape[1]), np.zeros((rows.shape[1], rows.shape[1]))
        count += len(rows)
        total += rows.sum(axis=0)
        outer += rows.T @ rows
    if total is None or outer is None or count < 2:
        raise ValueError("no patches to whiten from: no images given")
    mean = total / count
    return mean, (outer - count * np.outer(mean, mean)) / (count - 1)


def whitening_kernel(
    images: np.ndarray | Iterable[np.ndarray],
    kernel_shape: tuple[int, int, int, int],
    fill: np.ndarray | None = None,
    eps: float = EPS,
    per_image: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(kernel, bias, whitened filters) for a ``Conv2D`` of kernel shape ``(kh, kw, c, filters)`` reading ``images``.

    ``images``: NHWC, in the space the convolution reads (an array or an iterable of batches). Filter
    ``2i`` is ``v_i / sqrt(lambda_i + eps * mean(lambda))`` and filter ``2i + 1`` its negation, ``v_i``
    the ``i``-th largest component of the patch covariance; the bias is ``-filter . mean(patch)``.
    Filters beyond the ``2 * min(kh*kw*c, filters // 2)`` whitened ones take ``fill``'s columns (the
    convolution's own initial kernel; zeros where ``fill`` is None) and a zero bias.
    """
    kh, kw, channels, filters = kernel_shape
    dim = kh * kw * channels
    mean, cov = patch_covariance(images, (kh, kw), per_image, seed)
    if len(mean) != dim:
        raise ValueError(f"images have {len(mean) // (kh * kw)} channels, the kernel {kernel_shape} reads {channels}")
    values, vectors = np.linalg.eigh(cov)  # ascending
    values, vectors = np.clip(values[::-1], 0.0, None), vectors[:, ::-1]
    pairs = min(dim, filters // 2)
    scaled = vectors[:, :pairs] / np.sqrt(values[:pairs] + eps * max(values.mean(), 1e-12))
    kernel = np.zeros((dim, filters)) if fill is None else np.array(fill, dtype=np.float64).reshape(dim, filters)
    kernel[:, 0 : 2 * pairs : 2], kernel[:, 1 : 2 * pairs : 2] = scaled, -scaled
    bias = np.zeros(filters)
    bias[: 2 * pairs] = -(mean @ kernel[:, : 2 * pairs])
    return kernel.reshape(kernel_shape).astype(np.float32), bias.astype(np.float32), 2 * pairs


def first_conv(model: keras.Model) -> tuple[keras.layers.Conv2D, keras.Model]:
    """The first convolution of a model of tasks.model.models and a model from its uint8 images to what
    that convolution reads (AlexNet's ``conv1`` after ``normalize``; VGG16's ``block1_conv1``, which reads
    the base's input, the output of ``vgg_preprocess``)."""
    names = {layer.name for layer in model.layers}
    if "vgg16" in names:
        conv, seen = model.get_layer("vgg16").get_layer("block1_conv1"), model.get_layer("vgg_preprocess").output
    elif "conv1" in names:
        conv = model.get_layer("conv1")
        seen = conv.input
    else:
        raise ValueError(f"model {model.name!r} has neither a VGG16 base nor a layer 'conv1' to whiten")
    return conv, keras.Model(model.input, seen, name=f"{conv.name}_input")


def _sample(images: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(images) <= n:
        return images
    return images[np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))]


def whiten_first_conv(model: keras.Model, images: np.ndarray, seed: int = 0, sample: int = SAMPLE_IMAGES) -> int:
    """Set ``model``'s first convolution to the whitening of ``sample`` of the uint8 training ``images``;
    returns how many of its filters were whitened."""
    conv, features = first_conv(model)
    chosen = _sample(images, sample, seed)

    def seen() -> Iterator[np.ndarray]:
        for start in range(0, len(chosen), BATCH):
            batch = features(chosen[start : start + BATCH], training=False)
            yield keras.ops.convert_to_numpy(keras.ops.cast(batch, "float32"))

    shape, initial = tuple(conv.kernel.shape), keras.ops.convert_to_numpy(conv.kernel)
    kernel, bias, whitened = whitening_kernel(seen(), shape, initial, per_image=PATCHES_PER_IMAGE, seed=seed)
    conv.kernel.assign(kernel)
    if conv.use_bias:
        conv.bias.assign(bias)
    log.info(
        "%s: %d of %d filters whitened from the patches of %d training images",
        conv.name,
        whitened,
        conv.filters,
        len(chosen),
    )
    return whitened
