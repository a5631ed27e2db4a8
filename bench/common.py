"""Helpers the benchmarks share: real data from the archive, recipes from configs/, machine facts."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tasks.core.atomic import write_json  # noqa: E402
from tasks.core.params import SECTIONS, AlexNetParams, DataParams, VGG16Params, parse  # noqa: E402
from tasks.data.archive import read_archive  # noqa: E402
from tasks.data.splits import Split, facts, make_splits  # noqa: E402
from tools.overrides import load_overlay, merged  # noqa: E402

DEFAULT_ARCHIVE = Path(os.environ.get("CIFAR10_ARCHIVE", REPO.parent / "shared/data/cifar-10/cifar-10-python.tar.gz"))
#: Where every benchmark writes its record (docs/benchmarks.md quotes them).
RESULTS = REPO / "bench" / "results"


def write_result(name: str, record: dict[str, Any]) -> Path:
    """Write a benchmark's record to ``bench/results/<name>.json`` (atomically) and say where."""
    out = RESULTS / f"{name}.json"
    write_json(out, record)
    print(f"\nwrote {out}")
    return out


def real_splits(archive: Path = DEFAULT_ARCHIVE, seed: int = 42) -> tuple[dict[str, Split], dict[str, Any]]:
    """The project's own preprocessing of the real archive (same split as `dvc repro`)."""
    params = DataParams(
        url=str(archive),
        sha256="0" * 64,
        val_fraction=0.1,
        seed=seed,
        limit_train=None,
        limit_test=None,
        download_attempts=1,
        download_backoff=0.0,
        download_deadline=1800.0,
    )
    data = read_archive(archive)
    splits = make_splits(data, params)
    return splits, facts(splits, data, params)


def recipe_params(config: str | None, model: str = "alexnet", **changes: Any) -> AlexNetParams | VGG16Params:
    """The ``model`` section of params.yaml with the overlay ``configs/<config>.yaml`` and ``changes``."""
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    overlay = load_overlay(REPO / "configs" / f"{config}.yaml") if config else {}
    section = merged(base, overlay)[model] | changes
    return parse(SECTIONS[model], section)


#: CPU flags that decide how fast training can be here (and whether bfloat16 pays: tasks.core.precision).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "bf16")


def machine(rates: bool = True) -> dict[str, Any]:
    """What every benchmark records beside its figures: the processor (model, relevant flags, cores),
    the software, and -- with ``rates`` -- this machine's matmul rates measured in the same run
    (float32, and bfloat16 where the CPU has native bf16), which throughputs are stated against."""
    import keras

    from tasks.core.precision import CPU_BF16_FLAGS, cpu_flags

    flags = cpu_flags()
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
    }
    try:
        info["cpu_model"] = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    if rates:
        info["matmul_gflops"] = {"float32": round(matmul_flops() / 1e9, 1)}
        if flags.intersection(CPU_BF16_FLAGS):
            info["matmul_gflops"]["bfloat16"] = round(matmul_flops(dtype="bfloat16") / 1e9, 1)
    return info


def throughput_row(
    images_per_second: float, flops_per_image: float, batch: int, policy: str, rates: dict[str, float]
) -> dict[str, Any]:
    """Images/s and achieved FLOP/s of a training step, against the matmul rate of its precision."""
    precision = "bfloat16" if "bfloat16" in policy else "float32"
    achieved = images_per_second * flops_per_image
    return {
        "batch": batch,
        "precision": precision,
        "img/s": round(images_per_second, 1),
        "GFLOP/img": round(flops_per_image / 1e9, 3),
        "GFLOP/s": round(achieved / 1e9, 1),
        "of matmul rate": f"{achieved / (rates.get(precision, rates['float32']) * 1e9):.1%}",
    }


def describe_machine(info: dict[str, Any]) -> str:
    """One line for the top of a benchmark's output."""
    rates = ", ".join(f"{k} matmul {v} GFLOP/s" for k, v in info.get("matmul_gflops", {}).items())
    return (
        f"machine: {info.get('cpu_model', 'unknown CPU')}, {info['cpus']} cores, flags "
        f"{' '.join(info['cpu_flags']) or 'none of ' + ' '.join(CPU_FLAGS)}; {rates or 'rates not measured'}; "
        f"keras {info['keras']} on {info['backend']}"
    )


def matmul_flops(n: int = 4096, repeats: int = 5, dtype: str = "float32") -> float:
    """The machine's own matrix-multiply rate (FLOP/s) in ``dtype``, best of ``repeats``, compiled the way
    the backend compiles a training step (``tf.function`` / ``jax.jit``): eager calls measure overhead."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        ta, tb = tf.cast(tf.constant(a), dtype), tf.cast(tf.constant(b), dtype)
        step = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(ta, tb), "float32")))
    elif keras.backend.backend() == "jax":
        import jax

        ja, jb = jax.numpy.asarray(a, dtype=dtype), jax.numpy.asarray(b, dtype=dtype)
        step = jax.jit(lambda: (ja @ jb).astype("float32").sum())
    else:
        ka, kb = (keras.ops.cast(keras.ops.convert_to_tensor(m), dtype) for m in (a, b))
        step = lambda: keras.ops.sum(keras.ops.cast(keras.ops.matmul(ka, kb), "float32"))  # noqa: E731
    keras.ops.convert_to_numpy(step())
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        keras.ops.convert_to_numpy(step())
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def train_flops_per_image(model: Any) -> float:
    """Forward multiply-adds of every Conv2D and Dense layer, x2 for FLOPs, x3 for forward + backward."""
    import keras

    total = 0
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, cout = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * cout * kh * kw * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return 2.0 * 3.0 * total


def _all_layers(model: Any) -> list[Any]:
    out = []
    for layer in model.layers:
        out += _all_layers(layer) if hasattr(layer, "layers") else [layer]
    return out


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    line = "  ".join(c.ljust(widths[c]) for c in columns)
    body = ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join([line, "  ".join("-" * widths[c] for c in columns), *body])


def one_hot(y: np.ndarray) -> np.ndarray:
    return np.eye(10, dtype="float32")[y.astype(np.int64)]
