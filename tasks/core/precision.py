"""Which Keras dtype policy a run trains in: ``mixed_precision: auto | true | false`` -> policy + reason.

Half precision is only a speed-up where the hardware has native arithmetic for it. On a CPU
without bf16 instructions (AVX2-only x86) bfloat16 training ran 10x *slower* than float32 here,
so ``auto`` decides from what the hardware reports, never by habit:

* GPU with compute capability >= 8.0 (Ampere, Hopper, ...): ``mixed_bfloat16`` (tensor cores, and
  bfloat16 has float32's range, so no loss scaling is needed);
* GPU with tensor cores but no bf16 (compute capability 7.x): ``mixed_float16`` (Keras adds loss scaling);
* CPU with ``avx512_bf16`` or ``amx_bf16`` (x86) or ``bf16`` (ARM) in its flags: ``mixed_bfloat16``;
* anything else: ``float32``.

The decision is a pure function of the setting and a description of the hardware, so tests feed it
fake CPU flag sets and GPU descriptions; :func:`cpu_flags` reads the real ones at the edge.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Setting = bool | Literal["auto"]

#: CPU flags (as /proc/cpuinfo spells them) that mean native bfloat16 arithmetic.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@dataclass(frozen=True)
class Gpu:
    """What the decision needs to know about a GPU: its name and CUDA compute capability, if known."""

    name: str
    compute_capability: tuple[int, int] | None = None


@dataclass(frozen=True)
class Decision:
    policy: str  # a keras.mixed_precision policy name
    reason: str


def decide(setting: Setting, gpus: list[Gpu], cpu: Iterable[str]) -> Decision:
    """The dtype policy for ``mixed_precision: setting`` on a host with ``gpus`` and these CPU flags."""
    flags = set(cpu)
    if setting is False:
        return Decision("float32", "mixed_precision: false")
    if gpus:
        gpu = gpus[0]
        cc = gpu.compute_capability
        where = f"{gpu.name}, compute capability {'.'.join(map(str, cc)) if cc else 'unknown'}"
        if setting is True:
            if cc is not None and cc < (8, 0):
                return Decision("mixed_float16", f"mixed_precision: true on {where} (no bfloat16 units)")
            return Decision("mixed_bfloat16", f"mixed_precision: true on {where}")
        if cc is None:
            return Decision("float32", f"auto: {where}, so no tensor cores assumed")
        if cc >= (8, 0):
            return Decision("mixed_bfloat16", f"auto: {where} has bfloat16 tensor cores")
        if cc >= (7, 0):
            return Decision("mixed_float16", f"auto: {where} has float16 tensor cores but no bfloat16")
        return Decision("float32", f"auto: {where} has no tensor cores")
    native = sorted(flags.intersection(CPU_BF16_FLAGS))
    if setting is True:
        return Decision(
            "mixed_bfloat16",
            "mixed_precision: true on the CPU"
            + (f" ({', '.join(native)})" if native else " although it has no native bfloat16 (expect it to be slow)"),
        )
    if native:
        return Decision("mixed_bfloat16", f"auto: CPU has native bfloat16 ({', '.join(native)})")
    return Decision("float32", "auto: CPU has no native bfloat16 (no " + ", ".join(CPU_BF16_FLAGS) + " flag)")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """This CPU's feature flags (x86 ``flags``, ARM ``Features``); empty where they cannot be read."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()
