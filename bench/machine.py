"""What machine a benchmark ran on: CPU model and the SIMD flags that decide which kernels run."""

from __future__ import annotations

import os
from pathlib import Path

import torch

# The flags that change which kernels oneDNN and NNPACK pick (bf16 natively, or emulated).
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_info() -> dict:
    """{"model", "cores", "flags" (those of SIMD_FLAGS the CPU has), "torch_cpu_capability"}."""
    model, flags = "unknown", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in SIMD_FLAGS if f in flags],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
