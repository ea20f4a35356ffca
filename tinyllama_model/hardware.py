"""What this machine can do, and setting a process up to use it: device, threads, autocast, peak FLOP/s.

The trainer, evaluation and sizing ask here instead of probing torch themselves, so the answers (which
device "auto" means, when bf16 autocast is on, what peak MFU is measured against) are decided once.
Nothing here knows about models, data or runs.
"""

from __future__ import annotations

import os
import time
from contextlib import AbstractContextManager, nullcontext

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


def autocast_for(device: torch.device, dtype: str) -> tuple[AbstractContextManager, str]:
    """bf16 autocast on CUDA under "auto" (or when asked), plain fp32 elsewhere; float64 runs in double."""
    use_bf16 = dtype == "bfloat16" or (
        dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16), "bfloat16"
    return nullcontext(), "float64" if dtype == "float64" else "float32"


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
