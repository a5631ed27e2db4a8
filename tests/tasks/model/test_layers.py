"""The custom layers against the Keras code they replace or extend."""

from __future__ import annotations

import numpy as np
import pytest

import keras
from tasks.model.layers import FusedBatchNormalization, RandomAffineWarp


@pytest.mark.parametrize("shape", [(16, 6, 6, 5), (32, 7)])
def test_fused_batch_norm_matches_keras_in_training_and_inference(shape: tuple[int, ...]) -> None:
    """Same outputs, gradients and moving statistics as keras.layers.BatchNormalization (the fused
    TensorFlow kernel on the tensorflow backend, Keras' own code on the others)."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=shape) * 3 + 1).astype("float32")
    gamma, beta = rng.uniform(0.5, 1.5, shape[-1]).astype("float32"), np.linspace(-1, 1, shape[-1], dtype="float32")
    ours, theirs = FusedBatchNormalization(momentum=0.9), keras.layers.BatchNormalization(momentum=0.9)
    for layer in (ours, theirs):
        layer.build(shape)
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)

    def step(layer: keras.layers.Layer) -> tuple[np.ndarray, ...]:
        if keras.backend.backend() != "tensorflow":
            y = layer(x, training=True)
            return (keras.ops.convert_to_numpy(y),)
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt, training=True)
            loss = tf.reduce_sum(y * tf.sin(y))
        dx, dgamma = tape.gradient(loss, [xt, layer.gamma.value])
        return y.numpy(), dx.numpy(), dgamma.numpy()

    for a, b in zip(step(ours), step(theirs), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(getattr(ours, name)),
            keras.ops.convert_to_numpy(getattr(theirs, name)),
            rtol=1e-5,
        )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours(x, training=False)),
        keras.ops.convert_to_numpy(theirs(x, training=False)),
        atol=1e-5,
    )


def test_fused_batch_norm_round_trips_through_a_saved_model(tmp_path) -> None:
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, FusedBatchNormalization(name="bn")(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.get_layer("bn")) is FusedBatchNormalization


# --------------------------------------------------------------------------- RandomAffineWarp

SIZE, SPOT = 32, 6.0  # image side; how far the two off-centre spots sit from the centre


def _spots(n: int) -> np.ndarray:
    """``n`` copies of a known image: a spot in the centre (channel 0), one above it (1), one to its right (2)."""
    yy, xx = np.mgrid[:SIZE, :SIZE].astype("float32")
    c = (SIZE - 1) / 2
    centres = [(c, c), (c - SPOT, c), (c, c + SPOT)]
    image = np.stack([255 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5**2)) for y, x in centres], -1)
    return np.repeat(image[None], n, axis=0).astype("float32")


def _recovered(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per image, the warp that moved the spots: shift (pixels), rotation (degrees), mirrored or not."""
    yy, xx = np.mgrid[:SIZE, :SIZE].astype("float64")
    mass = images.sum(axis=(1, 2))
    cy = (images * yy[None, :, :, None]).sum(axis=(1, 2)) / mass
    cx = (images * xx[None, :, :, None]).sum(axis=(1, 2)) / mass
    c = (SIZE - 1) / 2
    up = np.stack([cx[:, 1] - cx[:, 0], cy[:, 1] - cy[:, 0]], -1)  # was (0, -SPOT)
    right = np.stack([cx[:, 2] - cx[:, 0], cy[:, 2] - cy[:, 0]], -1)  # was (SPOT, 0)
    # The "up" spot stays up under a mirror, so its angle is the rotation's either way (up to sign).
    angle = np.degrees(np.arctan2(up[:, 0], -up[:, 1]))
    mirrored = up[:, 0] * right[:, 1] - up[:, 1] * right[:, 0] < 0
    return {"dx": cx[:, 0] - c, "dy": cy[:, 0] - c, "angle": angle, "mirrored": mirrored}


def _keras_student_layers(seed: int) -> list[keras.layers.Layer]:
    return [
        keras.layers.RandomRotation(20 / 360, fill_mode="nearest", seed=seed),
        keras.layers.RandomTranslation(0.2, 0.2, fill_mode="nearest", seed=seed + 1),
        keras.layers.RandomFlip("horizontal", seed=seed + 2),
    ]


def _apply(layers: list[keras.layers.Layer], x: np.ndarray, training: bool = True) -> np.ndarray:
    out = keras.ops.convert_to_tensor(x)
    for layer in layers:
        out = layer(out, training=training)
    return keras.ops.convert_to_numpy(out)


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_random_affine_warp_draws_the_keras_layers_distribution(interpolation: str) -> None:
    """Rotations uniform in +-20 degrees, shifts uniform in +-20 % of the side, half the images
    mirrored: recovered from where a known image's spots land, for this layer and for the Keras
    layers it replaces, against each other and against the uniform laws (a zero rotation, a doubled
    shift or a missing flip fails)."""
    x = _spots(400)
    ours = _recovered(_apply([RandomAffineWarp(interpolation=interpolation, seed=3)], x))
    theirs = _recovered(_apply(_keras_student_layers(3), x))
    uniform_std = {"angle": 20 / np.sqrt(3), "dx": 0.2 * SIZE / np.sqrt(3), "dy": 0.2 * SIZE / np.sqrt(3)}
    reach = {"angle": 20.0, "dx": 0.2 * SIZE, "dy": 0.2 * SIZE}
    slack = {"angle": 1.5, "dx": 0.75, "dy": 0.75}  # nearest rounds once per pass
    for key, std in uniform_std.items():
        for got in (ours, theirs):
            assert abs(got[key].std() / std - 1) < 0.12, (key, got[key].std(), std)
            assert abs(got[key].mean()) < 0.2 * std, key
            assert np.abs(got[key]).max() < reach[key] + slack[key], key
            assert np.abs(got[key]).max() > reach[key] * 0.85, key
        assert abs(ours[key].std() / theirs[key].std() - 1) < 0.15, key
    for got in (ours, theirs):
        assert 0.4 < got["mirrored"].mean() < 0.6


def test_random_affine_warp_changes_pixels_as_much_as_the_keras_layers() -> None:
    """On smooth random images the mean and spread of the per-pixel change match the Keras layers'."""
    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, (200, 8, 8, 3)).astype("float32")
    x = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)
    ours = np.abs(_apply([RandomAffineWarp(seed=5)], x) - x)
    theirs = np.abs(_apply(_keras_student_layers(5), x) - x)
    assert abs(ours.mean() / theirs.mean() - 1) < 0.1, (ours.mean(), theirs.mean())
    assert abs(ours.std() / theirs.std() - 1) < 0.1, (ours.std(), theirs.std())


def test_random_affine_warp_is_the_identity_at_inference_and_keeps_shape_and_dtype(tmp_path) -> None:
    x = _spots(8)
    layer = RandomAffineWarp(seed=0)
    np.testing.assert_array_equal(_apply([layer], x, training=False), x)
    warped = layer(keras.ops.convert_to_tensor(x), training=True)
    assert tuple(warped.shape) == x.shape
    assert keras.backend.standardize_dtype(warped.dtype) == "float32"
    assert np.abs(keras.ops.convert_to_numpy(warped) - x).max() > 10
    half = RandomAffineWarp(seed=0, dtype="mixed_bfloat16")(keras.ops.convert_to_tensor(x), training=True)
    assert keras.backend.standardize_dtype(half.dtype) == "bfloat16"
    # Seeded: the same seed warps the same way.
    a, b = (_apply([RandomAffineWarp(seed=7)], x) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    # Serialisable inside a saved model.
    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, RandomAffineWarp(rotation=10, seed=1, name="warp")(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras").get_layer("warp")
    assert type(loaded) is RandomAffineWarp and loaded.rotation == 10


def test_random_affine_warp_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="rotation"):
        RandomAffineWarp(rotation=120)
    with pytest.raises(ValueError, match="interpolation"):
        RandomAffineWarp(interpolation="cubic")
