"""What a benchmark ran on and what it measured: the CPU (model, SIMD flags, load) and the commit."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The flags that decide which kernels oneDNN and NNPACK pick (bf16 natively, or emulated).
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_info() -> dict:
    """The CPU's model name and flags (/proc/cpuinfo's first processor), the SIMD ones among them,
    logical CPUs, the 1-minute load average, and torch's CPU capability where torch is imported."""
    info = {"model": platform.processor() or platform.machine(), "flags": [], "logical_cpus": os.cpu_count()}
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        first = ""
    for line in first.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            info["model"] = value.strip()
        elif key.strip() == "flags":
            info["flags"] = value.split()
    info["simd"] = [f for f in SIMD_FLAGS if f in info["flags"]]
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    if "torch" in sys.modules:  # not imported here: bench/startup.py times processes that must not load it
        info["torch_cpu_capability"] = sys.modules["torch"].backends.cpu.get_cpu_capability()
    return info


def commit() -> str | None:
    """The measured checkout's commit, "+" when its tracked files differ from it; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+" if dirty else "")
