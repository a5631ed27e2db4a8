"""The dtype-policy decision of ``mixed_precision: auto | true | false`` on described hardware."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.core.precision import Gpu, cpu_flags, decide

AVX2_EPYC = {"fpu", "sse2", "avx", "avx2", "fma"}
SAPPHIRE_RAPIDS = AVX2_EPYC | {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
COOPER_LAKE = AVX2_EPYC | {"avx512f", "avx512_bf16"}
SKYLAKE_X = AVX2_EPYC | {"avx512f", "avx512bw"}
GRAVITON3 = {"fp", "asimd", "sve", "bf16", "i8mm"}
GRAVITON2 = {"fp", "asimd", "atomics"}
H100 = Gpu("NVIDIA H100 80GB HBM3", (9, 0))
V100 = Gpu("Tesla V100-SXM2-16GB", (7, 0))
P100 = Gpu("Tesla P100-PCIE-16GB", (6, 0))


@pytest.mark.parametrize("flags", [AVX2_EPYC, SKYLAKE_X, GRAVITON2, set()])
def test_auto_keeps_float32_on_cpus_without_native_bf16(flags: set[str]) -> None:
    choice = decide("auto", [], flags)
    assert choice.policy == "float32"
    assert "no native bfloat16" in choice.reason


@pytest.mark.parametrize(
    "flags, seen", [(SAPPHIRE_RAPIDS, "amx_bf16"), (COOPER_LAKE, "avx512_bf16"), (GRAVITON3, "bf16")]
)
def test_auto_picks_bfloat16_on_cpus_with_native_bf16(flags: set[str], seen: str) -> None:
    choice = decide("auto", [], flags)
    assert choice.policy == "mixed_bfloat16"
    assert seen in choice.reason


@pytest.mark.parametrize(
    "gpu, policy", [(H100, "mixed_bfloat16"), (V100, "mixed_float16"), (P100, "float32"), (Gpu("some GPU"), "float32")]
)
def test_auto_on_gpus_follows_the_tensor_cores(gpu: Gpu, policy: str) -> None:
    # The host CPU's flags do not matter once a GPU trains.
    assert decide("auto", [gpu], SAPPHIRE_RAPIDS).policy == policy


def test_true_and_false_still_force_the_choice() -> None:
    assert decide(False, [H100], SAPPHIRE_RAPIDS).policy == "float32"
    assert decide(True, [], AVX2_EPYC).policy == "mixed_bfloat16"
    assert "slow" in decide(True, [], AVX2_EPYC).reason
    assert decide(True, [V100], set()).policy == "mixed_float16"
    assert decide(True, [H100], set()).policy == "mixed_bfloat16"


def test_cpu_flags_reads_x86_and_arm_cpuinfo(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(x86) == {"fpu", "avx2", "fma"}
    assert cpu_flags(arm) == {"fp", "asimd", "bf16"}
    assert cpu_flags(tmp_path / "missing") == set()
