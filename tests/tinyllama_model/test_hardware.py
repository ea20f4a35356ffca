"""What this machine can do: device choice, autocast, and a peak measurement that leaves the RNG alone."""

from __future__ import annotations

import shutil
from contextlib import nullcontext

import pytest
import torch

from tinyllama_model.hardware import (
    autocast_for,
    compile_blocker,
    cpu_flags,
    cpu_matmul_rates,
    cpu_report,
    machine_line,
    measure_matmul_flops,
    measured_peak,
    pick_cpu_dtype,
    resolve_device,
)

# what the issue measured on an AVX512-BF16 part (2 threads), and what an AVX2 part that emulates bf16 does
BF16_NATIVE = {"float32": 170e9, "bfloat16": 410e9}
BF16_EMULATED = {"float32": 60e9, "bfloat16": 6e9}


def test_measuring_matmul_flops_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    assert measure_matmul_flops(n=128, seconds=0.01) > 1e6
    assert torch.equal(torch.get_rng_state(), state)


def test_a_named_device_is_taken_as_given():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_autocast_only_where_bf16_is_asked_or_measured_faster():
    cpu = torch.device("cpu")
    ctx, dtype = autocast_for(cpu, "auto", BF16_EMULATED)
    assert isinstance(ctx, nullcontext) and dtype == "float32"
    ctx, dtype = autocast_for(cpu, "auto", BF16_NATIVE)
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16 and dtype == "bfloat16"
    assert autocast_for(cpu, "float64", BF16_NATIVE)[1] == "float64"
    assert autocast_for(cpu, "float32", BF16_NATIVE)[1] == "float32"  # asked for: no probe decides
    ctx, dtype = autocast_for(cpu, "bfloat16", BF16_EMULATED)
    assert isinstance(ctx, torch.autocast) and dtype == "bfloat16"


def test_the_cpu_picks_bf16_only_at_the_configured_speedup():
    assert pick_cpu_dtype(BF16_NATIVE) == "bfloat16"  # 2.4x
    assert pick_cpu_dtype(BF16_EMULATED) == "float32"  # 0.1x
    at_threshold = {"float32": 100.0, "bfloat16": 150.0}
    assert pick_cpu_dtype(at_threshold, 1.5) == "bfloat16" and pick_cpu_dtype(at_threshold, 1.6) == "float32"


def test_the_probe_measures_both_dtypes_once_and_leaves_the_rng_alone():
    state = torch.get_rng_state()
    rates = cpu_matmul_rates()
    assert rates["float32"] > 1e6 and rates["bfloat16"] > 1e6
    assert cpu_matmul_rates() is rates  # measured once per process: every trainer decides alike
    assert torch.equal(torch.get_rng_state(), state)
    # whichever this CPU is, "auto" follows its own measurement
    assert autocast_for(torch.device("cpu"), "auto")[1] == pick_cpu_dtype(rates)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma avx512f avx512_bf16 amx_tile\n")
    assert cpu_flags(info) == ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"]
    assert cpu_flags(tmp_path / "missing") == []
    report = cpu_report()
    assert report["fp32_gflops"] > 0 and report["auto_dtype"] in ("float32", "bfloat16")


def test_the_benchmarks_machine_line_names_flags_rates_and_dtype():
    report, line = cpu_report(), machine_line()  # the rates are measured once per process: same numbers
    assert f"fp32 {report['fp32_gflops']:.1f} / bf16 {report['bf16_gflops']:.1f} GFLOP/s" in line
    assert f"flags {' '.join(report['cpu_flags']) or '?'};" in line
    assert f"autocast picks {report['auto_dtype']}" in line


def test_the_measured_peak_uses_the_compute_dtype():
    state = torch.get_rng_state()
    assert measured_peak(torch.device("cpu"), "float32") > 1e6
    assert torch.equal(torch.get_rng_state(), state)


def test_compile_is_blocked_on_a_cpu_without_a_cpp_compiler_and_the_reason_names_the_fix():
    from torch._inductor import config

    with config.patch({"cpp.cxx": ("no-such-cxx-for-tinyllama",)}):
        reason = compile_blocker(torch.device("cpu"))
    assert reason is not None and "no-such-cxx-for-tinyllama" in reason and "install g++" in reason
    assert compile_blocker(torch.device("cuda")) is None  # CUDA kernels come from Triton, not a C++ compiler


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++, Inductor's default CPU compiler")
def test_compile_is_not_blocked_where_gxx_is_installed():
    assert compile_blocker(torch.device("cpu")) is None
