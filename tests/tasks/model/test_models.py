"""Model builders: exact parameter counts, custom layers, inference path, VGG16 weights and freezing."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from tasks.core.params import AlexNetParams, VGG16Params, parse
from tasks.model.layers import LocalResponseNormalization, RandomPadCrop, VGGPreprocess
from tasks.model.models import (
    build_alexnet,
    build_vgg16,
    for_inference,
    load_model,
    set_vgg_trainable,
    vgg16_base,
    vgg16_scratch_base,
)
from tests.conftest import params_section

#: Over params.yaml's sections: a one-epoch recipe without augmentation (unless a test says otherwise).
RECIPE = {
    "epochs": 1,
    "batch_size": 8,
    "optimizer": "sgd",
    "learning_rate": 0.01,
    "warmup_epochs": 0,
    "augmentation": "none",
}
ALEXNET = {"variant": "seed", "width": 1.0, "batch_norm": False, **RECIPE}
VGG16 = {"weights": "none", "head_epochs": 1, "fine_tune_learning_rate": 1e-5, **RECIPE}
MEAN, STD = [125.3, 123.0, 113.9], [63.0, 62.1, 66.7]


def alexnet(**kw: object) -> keras.Model:
    return build_alexnet(parse(AlexNetParams, params_section("alexnet", **ALEXNET | kw)), MEAN, STD)


def order(model: keras.Model, *names: str) -> list[str]:
    """The layers among ``names``, in the order the model applies them."""
    return [layer.name for layer in model.layers if layer.name in names]


@pytest.mark.parametrize(("variant", "count"), [("seed", 29_983_114), ("paper", 24_740_234)])
def test_alexnet_parameter_count_at_full_width(variant: str, count: int) -> None:
    assert alexnet(variant=variant).count_params() == count


def test_paper_variant_has_lrn_overlapping_pools_and_dropout() -> None:
    model = alexnet(variant="paper")
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("LocalResponseNormalization") == 2 and kinds.count("Dropout") == 2
    assert model.get_layer("pool1").pool_size == (3, 3) and model.get_layer("pool1").strides == (2, 2)
    assert "LocalResponseNormalization" not in [type(layer).__name__ for layer in alexnet(variant="seed").layers]
    assert order(model, "pool1", "lrn1", "conv1_relu") == ["conv1_relu", "lrn1", "pool1"]  # the paper's order


def test_width_and_batch_norm() -> None:
    narrow = alexnet(width=0.25, batch_norm=True)
    assert narrow.get_layer("conv1").filters == 24 and narrow.get_layer("fc6").units == 1024
    assert narrow.get_layer("conv1_bn") is not None
    # A pool straight after its convolution: batch norm and ReLU see a quarter of the map.
    for conv, pool in (("conv1", "pool1"), ("conv2", "pool2"), ("conv5", "pool5")):
        assert order(narrow, conv, pool, f"{conv}_bn", f"{conv}_relu") == [conv, pool, f"{conv}_bn", f"{conv}_relu"]
    assert narrow.get_layer("conv1_bn").output.shape == (None, 14, 14, 24)


@pytest.mark.parametrize("augmentation", ["none", "student", "student_keras", "crop_flip"])
def test_inference_path_keeps_input_size_and_is_deterministic(augmentation: str) -> None:
    model = alexnet(width=0.0625, augmentation=augmentation)
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    first, second = model.predict(x, verbose=0), model.predict(x, verbose=0)
    assert first.shape == (4, 10)
    np.testing.assert_allclose(first, second, rtol=1e-6)
    np.testing.assert_allclose(first.sum(axis=1), 1.0, rtol=1e-5)


def test_student_augmentation_is_the_matmul_warp_and_keras_layers_stay_reachable() -> None:
    kinds = {type(layer).__name__ for layer in alexnet(width=0.0625, augmentation="student").layers}
    assert "RandomAffineWarp" in kinds and "RandomRotation" not in kinds
    kinds = {type(layer).__name__ for layer in alexnet(width=0.0625, augmentation="student_keras").layers}
    assert {"RandomRotation", "RandomTranslation", "RandomFlip"} <= kinds and "RandomAffineWarp" not in kinds


def test_lrn_matches_the_paper_formula() -> None:
    x = np.random.default_rng(1).normal(size=(2, 3, 3, 7)).astype("float32")
    got = np.asarray(LocalResponseNormalization(depth=5, k=2.0, alpha=1e-2, beta=0.75)(x))
    sq = np.pad(x**2, [(0, 0), (0, 0), (0, 0), (2, 2)])
    window = sum(sq[..., i : i + 7] for i in range(5))
    np.testing.assert_allclose(got, x / (2.0 + 1e-2 * window) ** 0.75, rtol=1e-5)


def test_random_pad_crop_is_a_shift_in_training_and_identity_at_inference() -> None:
    x = np.arange(3 * 32 * 32 * 3, dtype="float32").reshape(3, 32, 32, 3) + 1
    layer = RandomPadCrop(4, seed=3)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    out = np.asarray(layer(x, training=True))
    for i in range(3):
        padded = np.pad(x[i], [(4, 4), (4, 4), (0, 0)])
        windows = [padded[r : r + 32, c : c + 32] for r in range(9) for c in range(9)]
        assert any(np.array_equal(w, out[i]) for w in windows)


def test_vgg_preprocess_matches_keras_applications() -> None:
    x = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    expected = keras.applications.vgg16.preprocess_input(x.copy())
    np.testing.assert_allclose(np.asarray(VGGPreprocess()(x)), expected, rtol=1e-5, atol=1e-3)


def test_saved_model_round_trip(tmp_path: Path) -> None:
    model = alexnet(variant="paper", width=0.0625, augmentation="crop_flip", batch_norm=True)
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    model.save(tmp_path / "m.keras")
    np.testing.assert_allclose(
        load_model(tmp_path / "m.keras").predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5
    )


def test_test_time_flip_averages_image_and_mirror_and_survives_saving(tmp_path: Path) -> None:
    model = alexnet(width=0.0625, augmentation="crop_flip", batch_norm=True)
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    plain, mirrored = model.predict(x, verbose=0), model.predict(x[:, :, ::-1], verbose=0)
    assert not np.allclose(plain, mirrored, atol=1e-4)  # else the check below proves nothing
    assert for_inference(model, "none") is model
    wrapped = for_inference(model, "flip")
    assert wrapped.count_params() == model.count_params()  # the same weights, not a copy
    np.testing.assert_allclose(wrapped.predict(x, verbose=0), (plain + mirrored) / 2, rtol=1e-5, atol=1e-6)
    wrapped.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert [type(layer).__name__ for layer in loaded.layers][-1] == "TestTimeFlip"
    np.testing.assert_allclose(loaded.predict(x, verbose=0), (plain + mirrored) / 2, rtol=1e-5, atol=1e-6)


def test_test_time_flip_translate_averages_six_views_and_survives_saving(tmp_path: Path) -> None:
    """Image and mirror weigh 1/2, the one-pixel up-left and down-right shifts (reflected edge), each
    with its mirror, 1/4 each; the same weights, saved and loaded."""
    model = alexnet(width=0.0625, augmentation="crop_flip", batch_norm=True)
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)], mode="reflect")

    def both(view: np.ndarray) -> np.ndarray:
        return (model.predict(view, verbose=0) + model.predict(view[:, :, ::-1], verbose=0)) / 2

    shifted = both(padded[:, :32, :32]), both(padded[:, 2:, 2:])
    assert not np.allclose(shifted[0], both(x), atol=1e-4)  # else the check below proves nothing
    want = both(x) / 2 + (shifted[0] + shifted[1]) / 4
    wrapped = for_inference(model, "flip_translate")
    assert wrapped.count_params() == model.count_params()
    np.testing.assert_allclose(wrapped.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)
    wrapped.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert [type(layer).__name__ for layer in loaded.layers][-1] == "TestTimeFlipTranslate"
    np.testing.assert_allclose(loaded.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)


def vgg(**kw: object) -> keras.Model:
    return build_vgg16(parse(VGG16Params, params_section("vgg16", **VGG16 | kw)))


def test_vgg16_weights_file_is_loaded(tmp_path: Path) -> None:
    """The code path users take with ImageNet weights, proven with a weights file we make ourselves."""
    source = vgg16_base("none", 32)
    path = tmp_path / "vgg16_notop.weights.h5"
    source.save_weights(path)
    model = vgg(weights=str(path))
    for a, b in zip(model.get_layer("vgg16").get_weights(), source.get_weights()):
        np.testing.assert_array_equal(a, b)
    fresh = vgg(weights="none")
    assert not np.array_equal(fresh.get_layer("vgg16").get_weights()[0], source.get_weights()[0])


def test_vgg16_upscales_inside_the_model() -> None:
    model = vgg(input_size=48)
    assert model.input_shape == (None, 32, 32, 3)
    assert model.get_layer("vgg16").input_shape == (None, 48, 48, 3)
    assert model.predict(np.zeros((1, 32, 32, 3), np.uint8), verbose=0).shape == (1, 10)


def test_vgg16_freezing_by_block() -> None:
    model = vgg()
    base = model.get_layer("vgg16")
    set_vgg_trainable(model, None)
    assert not base.trainable and len(model.trainable_weights) == 2  # the Dense head only
    set_vgg_trainable(model, "block4")
    trainable = {layer.name for layer in base.layers if layer.trainable and layer.weights}
    assert trainable == {f"block{b}_conv{c}" for b in (4, 5) for c in (1, 2, 3)}


def test_vgg16_width_scales_every_convolution_and_keeps_keras_names() -> None:
    """Built layer by layer at width 1, the base is keras.applications.VGG16 (same layers, same weight
    shapes); ``width`` scales each convolution's filters, and freezing by block still works."""
    keras_base, ours = vgg16_base("none", 32), vgg16_scratch_base(32)
    # The input layer's name is Keras' own counter (input_layer_N) in a process that built other models.
    assert [layer.name for layer in ours.layers[1:]] == [layer.name for layer in keras_base.layers[1:]]
    assert [w.shape for w in ours.get_weights()] == [w.shape for w in keras_base.get_weights()]
    narrow = vgg(width=0.25)
    filters = [layer.filters for layer in narrow.get_layer("vgg16").layers if isinstance(layer, keras.layers.Conv2D)]
    assert filters == [16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128]
    assert narrow.count_params() < vgg().count_params() / 10
    set_vgg_trainable(narrow, "block5")
    trainable = {layer.name for layer in narrow.get_layer("vgg16").layers if layer.trainable and layer.weights}
    assert trainable == {f"block5_conv{c}" for c in (1, 2, 3)}


def test_vgg16_batch_norm_keeps_keras_layer_names_and_trains() -> None:
    """``batch_norm``: a BN after every one of the 13 convolutions, keras.applications.VGG16's layer
    names kept (so freezing by block still works); without it, no BN at all. One step trains it."""
    plain = vgg().get_layer("vgg16")
    normed_model = vgg(batch_norm=True, head_epochs=0)
    normed = normed_model.get_layer("vgg16")
    bn = [layer.name for layer in normed.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in plain.layers)
    convs = [layer.name for layer in plain.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 13 and bn == [f"{name}_bn" for name in convs]
    named = {layer.name for layer in plain.layers if layer.weights or "pool" in layer.name}
    assert named <= {layer.name for layer in normed.layers}
    assert normed.output_shape == plain.output_shape
    set_vgg_trainable(normed_model, "block5")
    trainable = {layer.name for layer in normed.layers if layer.trainable and layer.weights}
    assert trainable == {f"block5_conv{c}{s}" for c in (1, 2, 3) for s in ("", "_bn")}
    set_vgg_trainable(normed_model, "block1")
    normed_model.compile(keras.optimizers.SGD(0.01), "categorical_crossentropy")
    x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    y = np.eye(10, dtype="float32")[np.arange(8) % 10]
    before = keras.ops.convert_to_numpy(normed.get_layer("block1_conv1_bn").moving_mean).copy()
    loss = normed_model.train_on_batch(x, y)
    assert np.isfinite(loss)
    after = keras.ops.convert_to_numpy(normed.get_layer("block1_conv1_bn").moving_mean)
    assert not np.allclose(before, after)  # the batch statistics were used and tracked
