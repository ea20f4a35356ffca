"""What this machine can do: device choice, autocast, and a peak measurement that leaves the RNG alone."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from tinyllama_model.hardware import autocast_for, measure_matmul_flops, measured_peak, resolve_device


def test_measuring_matmul_flops_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    assert measure_matmul_flops(n=128, seconds=0.01) > 1e6
    assert torch.equal(torch.get_rng_state(), state)


def test_a_named_device_is_taken_as_given():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_autocast_only_where_bf16_is_asked_or_native():
    cpu = torch.device("cpu")
    ctx, dtype = autocast_for(cpu, "auto")
    assert isinstance(ctx, nullcontext) and dtype == "float32"
    assert autocast_for(cpu, "float64")[1] == "float64"
    ctx, dtype = autocast_for(cpu, "bfloat16")
    assert isinstance(ctx, torch.autocast) and dtype == "bfloat16"


def test_the_measured_peak_uses_the_compute_dtype():
    state = torch.get_rng_state()
    assert measured_peak(torch.device("cpu"), "float32") > 1e6
    assert torch.equal(torch.get_rng_state(), state)
