"""Which numeric precision is fast on this machine.

bf16 only pays on a CPU with native bf16 units (AVX512-BF16 or AMX: AMD Zen 4+, Intel Cooper Lake, Sapphire
Rapids and later). Elsewhere oneDNN emulates it, although torch still reports bf16 as "supported" there: 3-4x
slower than fp32 with AVX-512, and far worse without it (an AMD EPYC Zen 3, AVX2 only: a bf16 matmul 7.8x
slower, a MiniLM training step 18x). `auto` picks by those flags (Linux) or, where no flags can be read, by a
short matmul probe.
"""

import functools
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

AUTO = "auto"
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Where no CPU flags can be read: bf16 must beat fp32 by this factor on a matmul to be chosen.
PROBE_MIN_SPEEDUP = 1.3


@dataclass(frozen=True)
class CPU:
    model: str
    flags: frozenset[str] | None  # None where the OS does not tell

    @property
    def bf16_flags(self) -> list[str]:
        return [f for f in CPU_BF16_FLAGS if self.flags and f in self.flags]


def _read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> CPU:
    model, flags = platform.processor() or platform.machine(), None
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return CPU(model, flags)
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and model in ("", platform.machine(), platform.processor()):
            model = value.strip()
        elif key in ("flags", "features") and flags is None:  # x86: flags; Arm: Features
            flags = frozenset(value.split())
    return CPU(model, flags)


@functools.cache
def cpu() -> CPU:
    return _read_cpuinfo()


def _matmul_seconds(dtype: torch.dtype, n: int = 512, repeat: int = 8) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    start = time.perf_counter()
    for _ in range(repeat):
        torch.matmul(a, b)
    return time.perf_counter() - start


@functools.cache
def cpu_bf16() -> tuple[bool, str]:
    """(native bf16 on this CPU, why), e.g. (True, "amx_bf16") or (False, "no avx512_bf16/amx_bf16")."""
    info = cpu()
    if info.flags is not None and platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
        found = info.bf16_flags
        return (True, "/".join(found)) if found else (False, f"no {'/'.join(CPU_BF16_FLAGS)}")
    speedup = _matmul_seconds(torch.float32) / _matmul_seconds(torch.bfloat16)
    return speedup >= PROBE_MIN_SPEEDUP, f"bf16 matmul {speedup:.1f}x fp32 (probe)"


def emulation_cost() -> str:
    """How much slower than fp32 bf16 runs on this CPU where it is emulated (docs/performance.md, per CPU)."""
    flags = cpu().flags
    if flags is None:
        return "slower than fp32"
    return "about 3-4x slower than fp32" if "avx512f" in flags else "10x or more slower than fp32 (no AVX-512)"


def on_cpu(accelerator) -> bool:
    name = (
        accelerator if isinstance(accelerator, str) else type(accelerator).__name__.lower().replace("accelerator", "")
    )
    if name == "auto":
        return not (torch.cuda.is_available() or torch.backends.mps.is_available())
    return name == "cpu"


def is_bf16(precision) -> bool:
    return "bf16" in str(precision)


def eval_batch_size(precision, cpu: bool = True) -> int:
    """Rows per evaluation/prediction batch, the fastest measured (docs/performance.md): on a CPU, fp32 and int8
    run fastest in small batches (their activations stay in cache; 128 rows lose 25-35% in fp32), bf16 with
    bf16 weights in batches of 64 (AMX: 5-8% faster than 32 or 128; AVX512-BF16: 32 to 128 within noise);
    a GPU wants large ones."""
    if not cpu:
        return 128
    return 64 if is_bf16(precision) else 32


def pad_multiple(precision) -> int:
    """Tokens a batch's length is padded up to a multiple of, for `data.pad_to_multiple_of: null`: 8 under 16-bit
    precision, as run_glue.py pads for fp16. A CPU's bf16 kernels (oneDNN) are built for each new input shape, about
    7 ms per linear layer's shape on an AMX Xeon, and a length-grouped run meets a new length every few batches
    (`make fit` 0.90x the time and 0.54x the memory with 8; docs/performance.md); fp32's kernels take any length."""
    return 8 if str(precision).startswith(("bf16", "16")) else 1


# The training batch where `--data.batch_size` is left null, and the learning rate's scale that goes with it.
DEFAULT_TRAIN_BATCH = 16
AMX_TRAIN_BATCH = 32


def train_batch_size(precision, accelerator="cpu") -> int:
    """Training rows per batch for `data.batch_size: null`: 32 under bf16 on a CPU with AMX, whose matrix units
    train a 32-row batch about 1.35x as fast per row as a 16-row one; 16 elsewhere, where 32 is no faster per
    row (fp32; AVX512-BF16 without AMX). docs/performance.md has the measurements."""
    if not on_cpu(accelerator) or "amx_bf16" not in (cpu().flags or ()):
        return DEFAULT_TRAIN_BATCH
    bf16 = is_bf16(precision) or ((precision is None or str(precision) == AUTO) and cpu_bf16()[0])
    return AMX_TRAIN_BATCH if bf16 else DEFAULT_TRAIN_BATCH


def learning_rate_for(batch_size: int, learning_rate: float) -> float:
    """The learning rate of a batch the machine chose: `learning_rate` is the 16-row batch's, scaled by the
    square root of the batch's growth (at 32 rows: the test accuracy of 16 rows within 0.1 points on two
    seeds, where the unscaled rate lost 0.25; docs/performance.md)."""
    return learning_rate * (batch_size / DEFAULT_TRAIN_BATCH) ** 0.5


def _say(message: str) -> None:
    if int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0:
        print(f"agnews: {message}", file=sys.stderr, flush=True)


def choose_batch(precision, accelerator, learning_rate: float) -> tuple[int, float]:
    """`fit`'s (training batch, learning rate) for `data.batch_size: null`: `learning_rate` is the 16-row one;
    one line says what was chosen where it is not 16 rows."""
    batch = train_batch_size(precision, accelerator)
    rate = learning_rate_for(batch, learning_rate)
    if batch != DEFAULT_TRAIN_BATCH:
        _say(
            f"training batch {batch} rows (bf16 on a CPU with AMX: more rows per second than {DEFAULT_TRAIN_BATCH}), "
            f"learning rate {rate:.4g} ({learning_rate:g} for {DEFAULT_TRAIN_BATCH} rows x sqrt({batch}/"
            f"{DEFAULT_TRAIN_BATCH})); --data.batch_size N sets both as given"
        )
    return batch, rate


def choose(precision, accelerator="cpu", *, fast: str = "bf16-mixed", plain: str = "32-true", fast_on_cpu: str = ""):
    """Resolve `auto` for this machine (one line says what and why); keep a named precision, warning once when
    it is bf16 on a CPU that only emulates it. `fast`/`plain` name the two choices in the caller's vocabulary;
    `fast_on_cpu` says how the caller runs `fast` on a CPU, for that line."""
    if precision is None or str(precision) == AUTO:
        if not on_cpu(accelerator):  # GPUs: bf16 where the card has it (Ampere and later)
            chosen = fast if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else plain
            _say(f"precision auto -> {chosen} (GPU)")
            return chosen
        native, why = cpu_bf16()
        chosen = fast if native else plain
        reason = "native bf16" if native else f"bf16 would be emulated, {emulation_cost()}"
        shown = f"{chosen}, {fast_on_cpu}" if native and fast_on_cpu else chosen
        _say(f"precision auto -> {shown} (CPU {cpu().model}: {why}; {reason})")
        return chosen
    if is_bf16(precision) and on_cpu(accelerator) and not cpu_bf16()[0]:
        _say(
            f"warning: precision {precision} on CPU {cpu().model} ({cpu_bf16()[1]}) is emulated, {emulation_cost()}; "
            f"leave precision at auto for the fast choice"
        )
    return precision
