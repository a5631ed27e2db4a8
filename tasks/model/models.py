"""The two models, built from params: AlexNet (student's ``seed`` stack or the ``paper`` one) and VGG16.

Each model takes uint8 images (N, 32, 32, 3) and returns class probabilities. Scaling,
normalisation and augmentation are layers inside the model, so the same saved file predicts
from raw pixels on any Keras backend, and augmentation runs where the model runs (GPU or CPU).
Augmentation layers are the identity at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import keras
from keras import layers

from tasks.core.errors import WeightsUnavailable, reading
from tasks.core.params import AlexNetParams, VGG16Params
from tasks.model import layers as custom_layers

INPUT_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
#: Where keras.applications.VGG16 fetches its ImageNet weights without the classifier (and caches them in ~/.keras).
IMAGENET_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
    "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
)
#: Block names of keras.applications.VGG16, in order.
VGG_BLOCKS = ("block1", "block2", "block3", "block4", "block5")


def augmentation(kind: str, seed: int, crop_padding: int) -> list[layers.Layer]:
    """Training-time augmentation layers (identity at inference)."""
    if kind == "none":
        return []
    if kind == "student":
        # ImageDataGenerator(rotation_range=20, width/height_shift_range=0.2, horizontal_flip=True),
        # whose default fill mode is "nearest" and interpolation bilinear, without a per-pixel gather.
        return [custom_layers.RandomAffineWarp(20.0, 0.2, 0.2, horizontal_flip=True, seed=seed)]
    if kind == "student_keras":
        # The same draw through Keras' own layers (a per-pixel gather: slow on accelerators).
        return [
            layers.RandomRotation(20 / 360, fill_mode="nearest", seed=seed),
            layers.RandomTranslation(0.2, 0.2, fill_mode="nearest", seed=seed + 1),
            layers.RandomFlip("horizontal", seed=seed + 2),
        ]
    if kind == "crop_flip":
        return [custom_layers.RandomPadCrop(crop_padding, seed=seed), layers.RandomFlip("horizontal", seed=seed + 1)]
    raise ValueError(f"unknown augmentation {kind!r}")


def _scaled(channels: int, width: float) -> int:
    return max(8, round(channels * width))


def build_alexnet(params: AlexNetParams, mean: Sequence[float], std: Sequence[float]) -> keras.Model:
    """AlexNet for 32x32 inputs.

    ``seed``: the student's stack -- Conv 96 5x5 valid, pool 2/2, Conv 256 5x5 same, pool,
    Conv 384, 384, 256 3x3 same, pool, Dense 4096, 4096, 10 (29,983,114 parameters at width 1).
    ``paper``: adds local response normalisation after the first two convolutions, overlapping
    3x3 stride-2 pooling and dropout 0.5 in the dense layers, as in Krizhevsky et al. (2012).
    ``batch_norm`` puts batch normalisation between each convolution/dense layer and its ReLU.
    A max-pool comes straight after its convolution, before the normalisation and the ReLU
    (everywhere but behind the paper's LRN): it commutes with the ReLU, and normalising the pooled
    map is a quarter of the work, the largest cost of the step at the CPU recipe's width.
    ``mean``/``std`` are the train split's per-channel statistics in 0..255 units.
    """
    paper = params.variant == "paper"
    w = params.width
    inputs = keras.Input(INPUT_SHAPE, dtype="uint8", name="image")
    x = layers.Normalization(mean=list(mean), variance=[s * s for s in std], name="normalize")(_to_float(inputs))
    for layer in augmentation(params.recipe.augmentation, params.recipe.seed, params.recipe.crop_padding):
        x = layer(x)

    def conv(
        x: keras.KerasTensor, filters: int, size: int, padding: str, name: str, pool: str = "", lrn: str = ""
    ) -> keras.KerasTensor:
        x = layers.Conv2D(_scaled(filters, w), size, padding=padding, use_bias=not params.batch_norm, name=name)(x)
        if pool and not lrn:  # max-pooling commutes with the ReLU: pooled first, a quarter as much to normalise
            x = pooling(pool)(x)
        if params.batch_norm:
            x = custom_layers.FusedBatchNormalization(name=f"{name}_bn")(x)
        x = layers.ReLU(name=f"{name}_relu")(x)
        if lrn:
            x = pooling(pool)(custom_layers.LocalResponseNormalization(name=lrn)(x))
        return x

    def pooling(name: str) -> layers.Layer:
        return layers.MaxPooling2D(3, 2, name=name) if paper else layers.MaxPooling2D(2, 2, name=name)

    x = conv(x, 96, 5, "valid", "conv1", "pool1", "lrn1" if paper else "")
    x = conv(x, 256, 5, "same", "conv2", "pool2", "lrn2" if paper else "")
    x = conv(x, 384, 3, "same", "conv3")
    x = conv(x, 384, 3, "same", "conv4")
    x = conv(x, 256, 3, "same", "conv5", "pool5")
    x = layers.Flatten(name="flatten")(x)
    for i in (6, 7):
        x = layers.Dense(_scaled(4096, w), use_bias=not params.batch_norm, name=f"fc{i}")(x)
        if params.batch_norm:
            x = custom_layers.FusedBatchNormalization(name=f"fc{i}_bn")(x)
        x = layers.ReLU(name=f"fc{i}_relu")(x)
        if paper:
            x = layers.Dropout(0.5, seed=params.recipe.seed + i, name=f"dropout{i}")(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name=f"alexnet_{params.variant}")


def _to_float(inputs: keras.KerasTensor) -> keras.KerasTensor:
    # A Rescaling(1) is the serialisable way to cast uint8 pixels to the compute dtype.
    return layers.Rescaling(1.0, name="to_float")(inputs)


#: Convolutions per block of VGG16 and their filters (Simonyan and Zisserman's configuration D).
VGG_CONVS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


def vgg16_scratch_base(input_size: int, batch_norm: bool = False, width: float = 1.0) -> keras.Model:
    """VGG16 without its classifier, random weights, built layer by layer: ``width`` scales every
    convolution's filters (1.0 = VGG16's own), ``batch_norm`` puts batch normalisation between every
    convolution and its ReLU. Layer names are keras.applications.VGG16's (``block1_conv1`` ...
    ``block5_pool``), plus ``<conv>_bn`` and ``<conv>_relu`` with batch norm, so block-wise freezing
    works the same."""
    inputs = keras.Input((input_size, input_size, 3), name="input_layer")
    x = inputs
    for b, (convs, filters) in enumerate(VGG_CONVS, start=1):
        for c in range(1, convs + 1):
            name = f"block{b}_conv{c}"
            if batch_norm:
                x = layers.Conv2D(_scaled(filters, width), 3, padding="same", use_bias=False, name=name)(x)
                x = custom_layers.FusedBatchNormalization(name=f"{name}_bn")(x)
                x = layers.ReLU(name=f"{name}_relu")(x)
            else:
                x = layers.Conv2D(_scaled(filters, width), 3, padding="same", activation="relu", name=name)(x)
        x = layers.MaxPooling2D(2, 2, name=f"block{b}_pool")(x)
    return keras.Model(inputs, x, name="vgg16")


def vgg16_base(weights: str, input_size: int, batch_norm: bool = False, width: float = 1.0) -> keras.Model:
    """``keras.applications.VGG16(include_top=False)`` with ImageNet, no, or file-loaded weights;
    with ``batch_norm`` or another ``width`` (random weights only) :func:`vgg16_scratch_base`."""
    if batch_norm or width != 1.0:
        if weights != "none":
            raise ValueError(f"VGG16 with batch norm or width {width} has no pretrained weights to load ({weights!r})")
        return vgg16_scratch_base(input_size, batch_norm, width)
    resolved = {"imagenet": "imagenet", "none": None}.get(weights, weights)
    if resolved not in ("imagenet", None) and not Path(resolved).is_file():
        raise FileNotFoundError(resolved)
    # A weights file of the user's own: a damaged or wrong one is an input error, not a bug.
    region = nullcontext() if resolved in ("imagenet", None) else reading(resolved, "vgg16.weights")
    try:
        with region:
            shape = (input_size, input_size, 3)
            return keras.applications.VGG16(include_top=False, weights=resolved, input_shape=shape)
    except Exception as exc:  # Keras reports a failed download as a bare Exception("URL fetch failure ...")
        if resolved != "imagenet" or "URL fetch failure" not in str(exc):
            raise
        cause = str(exc).split(" -- ", 1)[-1].strip()
        raise WeightsUnavailable(
            f"vgg16.weights: imagenet: cannot download the ImageNet weights from {IMAGENET_NOTOP_URL} ({cause}). "
            "Either set vgg16.weights to a local copy of that file (a *_notop.h5 weights file) or to 'none' to "
            "train VGG16 from random weights (configs/vgg16-scratch.yaml)"
        ) from None


def build_vgg16(params: VGG16Params) -> keras.Model:
    """VGG16 base (batch-normalised with ``vgg16.batch_norm``, filters scaled by ``vgg16.width``)
    + global average pooling + (dropout) + Dense(10); VGG's own preprocessing inside.

    Inputs larger than 32x32 are reached by resizing inside the model (``vgg16.input_size``),
    so the stored arrays stay 32x32.
    """
    base = vgg16_base(params.weights, params.input_size, params.batch_norm, params.width)
    inputs = keras.Input(INPUT_SHAPE, dtype="uint8", name="image")
    x = _to_float(inputs)
    for layer in augmentation(params.recipe.augmentation, params.recipe.seed, params.recipe.crop_padding):
        x = layer(x)
    if params.input_size != INPUT_SHAPE[0]:
        x = layers.Resizing(params.input_size, params.input_size, interpolation="bilinear", name="upscale")(x)
    x = custom_layers.VGGPreprocess(name="vgg_preprocess")(x)
    x = base(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if params.dropout:
        x = layers.Dropout(params.dropout, seed=params.recipe.seed, name="dropout")(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name="vgg16")


def set_vgg_trainable(model: keras.Model, unfreeze_from: str | None) -> None:
    """Freeze the VGG base (``None``) or unfreeze it from block ``unfreeze_from`` onwards."""
    base = model.get_layer("vgg16")
    if unfreeze_from is None:
        base.trainable = False
        return
    base.trainable = True
    first = VGG_BLOCKS.index(unfreeze_from)
    for layer in base.layers:
        block = layer.name.split("_")[0]
        layer.trainable = block in VGG_BLOCKS and VGG_BLOCKS.index(block) >= first


def for_inference(model: keras.Model, test_time_augmentation: str) -> keras.Model:
    """The model as the stage saves it: ``flip`` wraps it in :class:`~tasks.model.layers.TestTimeFlip`
    (same weights, predictions averaged over the image and its mirror image), ``flip_translate`` in
    :class:`~tasks.model.layers.TestTimeFlipTranslate` (six views); ``none`` returns it as is.

    Only the saved model is wrapped: per-epoch validation and the choice of the best epoch use the
    plain model, so the augmentation costs nothing while training.
    """
    if test_time_augmentation == "none":
        return model
    wrappers = {"flip": custom_layers.TestTimeFlip, "flip_translate": custom_layers.TestTimeFlipTranslate}
    if test_time_augmentation not in wrappers:
        raise ValueError(f"unknown test_time_augmentation {test_time_augmentation!r}")
    inputs = keras.Input(INPUT_SHAPE, dtype="uint8", name="image")
    outputs = wrappers[test_time_augmentation](model, name=f"test_time_{test_time_augmentation}")(inputs)
    return keras.Model(inputs, outputs, name=model.name)


def load_model(path: str | Path, compile: bool = True) -> keras.Model:
    """Load a model saved by the training stages (custom layers are registered on import)."""
    with reading(path, "a Keras model"):
        return keras.saving.load_model(path, compile=compile)
