"""What this machine can do, and setting a process up to use it: device, threads, autocast, peak FLOP/s.

The trainer, evaluation and sizing ask here instead of probing torch themselves, so the answers (which
device "auto" means, when bf16 autocast is on, what peak MFU is measured against) are decided once.
Nothing here knows about models, data or runs.
"""

from __future__ import annotations

import functools
import os
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch


def resolve_device(name: str) -> torch.device:
    """A named device as given; "auto": this process's CUDA device (LOCAL_RANK) if there is one, else CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def prepare_device(device: torch.device, num_threads: int | None, world: int) -> None:
    """Make `device` current and fast (TF32 matmuls on CUDA); share the CPU cores among local processes."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if num_threads or device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(num_threads or max(1, (os.cpu_count() or 1) // local_world))


def compile_blocker(device: torch.device) -> str | None:
    """Why `torch.compile` cannot build kernels for `device` here, or None when it can.

    Inductor compiles CPU kernels with a C++ compiler found at run time (g++ unless `CXX` or
    `torch._inductor.config.cpp.cxx` says otherwise). A machine without one would crash at the first
    forward; asked first, the trainer runs eager instead and says why.
    """
    if device.type != "cpu":
        return None
    from torch._inductor import config, cpp_builder, exc

    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        names = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
        wanted = ", ".join(name for name in names if name)
        return f"no C++ compiler for Inductor's CPU kernels (looked for {wanted}); install g++ or set CXX"
    return None


# bf16 autocast also converts activations and casts back, so a bf16 matmul only pays on a CPU when it is
# clearly faster than fp32 (measured speedups per CPU family: docs/tuning-log.md)
BF16_MIN_SPEEDUP = 1.5
CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The SIMD flags that decide matmul speed (of `CPU_FLAGS_OF_INTEREST`), as /proc/cpuinfo lists them."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    present = set(line.partition(":")[2].split())
    return [f for f in CPU_FLAGS_OF_INTEREST if f in present]


@functools.cache
def cpu_matmul_rates(n: int = 512, seconds: float = 0.15, threads: int | None = None) -> dict[str, float]:
    """FLOP/s of an (n x n) matmul in fp32 and in bf16 on this CPU, measured once per process.

    The probe that decides CPU autocast: a few hundred milliseconds, cached because the machine does
    not change while the process lives (and so every trainer in one process decides alike). `threads`
    measures on that many threads instead of torch's current count (restored afterwards).
    """
    cpu = torch.device("cpu")
    current = torch.get_num_threads()
    torch.set_num_threads(threads or current)
    try:
        return {
            "float32": measure_matmul_flops(cpu, torch.float32, n, seconds),
            "bfloat16": measure_matmul_flops(cpu, torch.bfloat16, n, seconds),
        }
    finally:
        torch.set_num_threads(current)


def pick_cpu_dtype(rates: dict[str, float], min_speedup: float = BF16_MIN_SPEEDUP) -> str:
    """bfloat16 when its measured matmul rate is at least `min_speedup` times fp32's, else float32."""
    return "bfloat16" if rates["bfloat16"] >= min_speedup * rates["float32"] else "float32"


def resolve_dtype(device: torch.device, dtype: str, rates: dict[str, float] | None = None) -> str:
    """The dtype a run computes in: "auto" is bf16 on a CUDA that supports it, on a CPU whatever the
    matmul probe (`rates`, measured when not given) says is faster; fp32 elsewhere (e.g. MPS)."""
    if dtype != "auto":
        return dtype
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device.type == "cpu":
        return pick_cpu_dtype(rates or cpu_matmul_rates())
    return "float32"


def autocast_for(
    device: torch.device, dtype: str, rates: dict[str, float] | None = None
) -> tuple[AbstractContextManager, str]:
    """bf16 autocast when `resolve_dtype` says bf16, plain fp32 otherwise; float64 runs in double."""
    resolved = resolve_dtype(device, dtype, rates)
    if resolved == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16), "bfloat16"
    return nullcontext(), resolved


def measure_matmul_flops(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    n: int | None = None,
    seconds: float = 0.3,
) -> float:
    """FLOP/s of an (n x n) @ (n x n) matmul on this device: the peak that MFU is measured against.

    Uses a private generator so measuring never shifts the global RNG (exact resume depends on it).
    """
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    a @ b  # warm up (thread pool, kernels)
    sync()
    reps, t0 = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return 2 * n**3 * reps / elapsed


def measured_peak(device: torch.device, dtype: str) -> float:
    """The MFU denominator when none is configured: a matmul in the dtype training computes in."""
    return measure_matmul_flops(device, getattr(torch, dtype))


def cpu_report() -> dict[str, object]:
    """What benchmarks print beside every figure: the CPU's flags, its matmul rates and the dtype picked."""
    rates = cpu_matmul_rates()
    return {
        "cpu_flags": cpu_flags(),
        "threads": torch.get_num_threads(),
        "fp32_gflops": rates["float32"] / 1e9,
        "bf16_gflops": rates["bfloat16"] / 1e9,
        "auto_dtype": pick_cpu_dtype(rates),
    }


def machine_line() -> str:
    """One line every benchmark prints beside its table: a figure means little without the machine."""
    cpu = cpu_report()
    load = os.getloadavg()[0]
    return (
        f"{os.cpu_count()} cores, flags {' '.join(cpu['cpu_flags']) or '?'}; matmul fp32 "
        f"{cpu['fp32_gflops']:.1f} / bf16 {cpu['bf16_gflops']:.1f} GFLOP/s on {cpu['threads']} threads "
        f"(autocast picks {cpu['auto_dtype']}); torch {torch.__version__}; load average {load:.2f}"
    )
