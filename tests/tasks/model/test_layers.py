"""The custom layers against the Keras code they replace or extend."""

from __future__ import annotations

import numpy as np
import pytest

import keras
from tasks.model.layers import FusedBatchNormalization


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
