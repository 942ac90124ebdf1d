"""Process-level settings for heavy CPU jobs, and the machine facts benchmarks record.

glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh mmap
and unmaps it on free, so each large activation tensor costs page faults on first touch.
Convolutional codecs on long audio allocate such tensors in every layer: in
bench/tokenizer_speed.py the kernel time exceeded half the wall time. Keeping freed memory in the
heap instead makes EnCodec's encoder 1.3x faster one item at a time and 2.5x faster on a
batch of 8 (8 x 3 s: 0.89 s -> 0.69 s and 1.51 s -> 0.61 s on 2 cores). The cost: the
process keeps its peak memory until it exits, which suits batch jobs (extraction, benches).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import os
import platform
import sys

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> str:
    """ "auto" -> "cuda" where a CUDA device is present, else "cpu"; any other name as is."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """ "auto" -> bf16 on CUDA (fast there), fp32 elsewhere (bf16 matmul is ~200x slower on
    these CPUs); else one of DTYPES."""
    if name == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}: expected auto or one of {', '.join(DTYPES)}")
    return DTYPES[name]


M_TRIM_THRESHOLD = -1  # mallopt parameters from glibc's malloc.h
M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Ask glibc to serve large allocations from the heap and keep freed memory (Linux only).

    Returns whether the setting was applied (False on other C libraries or platforms).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def machine_facts() -> dict:
    """What a benchmark's numbers depend on: platform, CPU count, torch and its threads, GPU.

    Every bench/ script stores this under "machine" in its JSON, so ratios measured on
    different machines are never compared unknowingly.
    """
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def utc_timestamp() -> str:
    """Now in UTC, ISO 8601 to the second: the "date" of a benchmark report."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
