"""Patch whitening of the first convolution: it whitens what a Keras Conv2D sees, for any filter count,
in the space each model feeds its first convolution, on both backends."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest

from tasks.model.layers import VGGPreprocess
from tasks.model.whitening import EPS, first_conv, patches, whitening_kernel
from tests.conftest import REPO, subprocess_env
from tests.tasks.model.test_models import MEAN, STD, alexnet, vgg


def correlated_images(n: int = 48, size: int = 16, seed: int = 0) -> np.ndarray:
    """Pixels correlated across neighbours and channels, as in photographs: patch variances far apart."""
    z = np.random.default_rng(seed).normal(size=(n, size, size, 3))
    z = z + np.roll(z, 1, axis=1) + np.roll(z, 1, axis=2)
    return (z @ np.array([[1.0, 0.5, 0.2], [0.0, 1.0, 0.3], [0.0, 0.0, 0.4]]) * 40 + 100).astype(np.float32)


def convolved(images: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The outputs of a Keras Conv2D (valid padding) holding ``kernel`` and ``bias``, one row per position."""
    conv = keras.layers.Conv2D(kernel.shape[-1], kernel.shape[:2])
    conv.build((None, *images.shape[1:]))
    conv.set_weights([kernel, bias])
    return keras.ops.convert_to_numpy(conv(images)).reshape(-1, kernel.shape[-1])


def eigen(images: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors of the patch covariance, computed here independently."""
    values, vectors = np.linalg.eigh(np.cov(patches(images, size).astype(np.float64).T))
    return values[::-1], vectors[:, ::-1]


def test_the_kernel_whitens_patches_as_a_keras_convolution_sees_them() -> None:
    """Projected by the kernel, patches have zero mean and identity covariance; each filter pair is +v, -v."""
    x = correlated_images()
    values, _ = eigen(x, (3, 3))
    # Patch variances spread over orders of magnitude: unscaled eigenvectors (no 1/sqrt(eigenvalue)) would
    # give a covariance of diag(eigenvalues), far from the identity asserted below.
    assert values[0] / values[-1] > 50
    kernel, bias, whitened = whitening_kernel(x, (3, 3, 3, 54), eps=1e-9)
    assert whitened == 54 and kernel.shape == (3, 3, 3, 54) and kernel.dtype == np.float32
    out = convolved(x, kernel, bias)
    np.testing.assert_allclose(np.cov(out[:, 0::2].T), np.eye(27), atol=1e-3)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(out[:, 1::2], -out[:, 0::2], atol=1e-4)
    # The default eps damps each component by lambda / (lambda + eps * mean(lambda)): none of the data
    # is lost, the near-constant directions are not blown up.
    kernel, bias, _ = whitening_kernel(x, (3, 3, 3, 54))
    damped = values / (values + EPS * values.mean())
    np.testing.assert_allclose(np.cov(convolved(x, kernel, bias)[:, 0::2].T), np.diag(damped), atol=1e-3)


def test_fewer_filters_keep_the_top_components() -> None:
    """24 filters of 5x5x3 (75 dimensions): the 12 largest components, in order, whitened."""
    x = correlated_images()
    _, vectors = eigen(x, (5, 5))
    kernel, bias, whitened = whitening_kernel(x, (5, 5, 3, 24), eps=1e-9)
    assert whitened == 24
    directions = kernel.reshape(75, 24)[:, 0::2]
    directions = directions / np.linalg.norm(directions, axis=0)
    np.testing.assert_allclose(np.abs(np.sum(directions * vectors[:, :12], axis=0)), 1.0, atol=1e-3)
    np.testing.assert_allclose(np.cov(convolved(x, kernel, bias)[:, 0::2].T), np.eye(12), atol=1e-3)


@pytest.mark.parametrize(("filters", "whitened"), [(64, 54), (7, 6)])
def test_filters_beyond_the_pairs_keep_their_initial_values(filters: int, whitened: int) -> None:
    """More filters than twice the 27 dimensions of a 3x3x3 patch, or an odd count: the rest are ``fill``'s."""
    x = correlated_images()
    fill = np.random.default_rng(1).normal(size=(3, 3, 3, filters)).astype(np.float32)
    kernel, bias, count = whitening_kernel(x, (3, 3, 3, filters), fill)
    assert count == whitened
    np.testing.assert_array_equal(kernel[..., whitened:], fill[..., whitened:])
    np.testing.assert_array_equal(bias[whitened:], 0.0)
    assert not np.allclose(kernel[..., :whitened], fill[..., :whitened])


def test_batches_count_as_one_array() -> None:
    x = correlated_images()
    whole = whitening_kernel(x, (3, 3, 3, 16))
    batched = whitening_kernel(iter([x[:20], x[20:]]), (3, 3, 3, 16))
    for a, b in zip(whole[:2], batched[:2]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="the kernel \\(3, 3, 1, 16\\) reads 1"):
        whitening_kernel(x, (3, 3, 1, 16))


def test_first_conv_reads_what_each_model_feeds_it() -> None:
    """AlexNet's conv1 reads the normalised pixels, VGG16's block1_conv1 VGG's preprocessing; training-time
    augmentation is left out (the identity at inference)."""
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    model = alexnet(width=0.0625, augmentation="crop_flip")
    conv, features = first_conv(model)
    seen = keras.ops.convert_to_numpy(features(x, training=False))
    np.testing.assert_allclose(seen, (x - np.array(MEAN)) / np.array(STD), rtol=1e-5, atol=1e-5)
    inside = keras.Model(model.input, conv.output)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(conv(seen)), inside.predict(x, verbose=0), atol=1e-5)

    model = vgg(augmentation="crop_flip")
    conv, features = first_conv(model)
    assert conv.name == "block1_conv1"
    seen = keras.ops.convert_to_numpy(features(x, training=False))
    expected = keras.ops.convert_to_numpy(VGGPreprocess()(x.astype("float32")))
    np.testing.assert_allclose(seen, expected, atol=1e-4)
    # ... and it is what the base is called on: the base applied to it is the model's own base output.
    base_out = keras.Model(model.input, model.get_layer("gap").input).predict(x, verbose=0)
    np.testing.assert_allclose(model.get_layer("vgg16").predict(seen, verbose=0), base_out, rtol=1e-4, atol=1e-4)


#: Whitens a tiny AlexNet's conv1 on the fixture-like images and checks its outputs (run under the backend asked).
ON_BACKEND = """
import keras, numpy as np
from tasks.core.params import AlexNetParams, load_section, parse
from tasks.model.models import build_alexnet
from tasks.model.whitening import first_conv, whiten_first_conv
x = np.random.default_rng(0).normal(128, 40, (300, 32, 32, 3)).clip(0, 255).astype("uint8")
x[:, 1:] = (x[:, 1:] // 2 + x[:, :-1] // 2)  # neighbouring rows correlated
section = load_section("alexnet") | {"width": 0.25, "batch_norm": False, "augmentation": "crop_flip"}
model = build_alexnet(parse(AlexNetParams, section), [128.0] * 3, [40.0] * 3)
conv, _ = first_conv(model)
assert whiten_first_conv(model, x) == 24
out = keras.Model(model.input, conv.output).predict(x, verbose=0).reshape(-1, 24)
np.testing.assert_allclose(np.cov(out[:, 0::2].T), np.eye(12), atol=0.05)
np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=0.05)
print("whitened on", keras.backend.backend())
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_whiten_first_conv_on_each_backend(backend: str) -> None:
    """On a model: its conv1 outputs (bias included) on the training images are centred and white."""
    if backend == keras.backend.backend():
        exec(ON_BACKEND, {})  # this process's backend: no interpreter to start
        return
    env = subprocess_env() | {"PYTHONPATH": str(REPO), "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-c", ON_BACKEND], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert f"whitened on {backend}" in done.stdout
