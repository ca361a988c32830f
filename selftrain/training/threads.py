"""How many CPU threads a training run should use.

One per core is right on a machine with nothing else to do. On a machine shared with other
CPU-heavy work it can be several times slower than one thread: every operator ends in an
OpenMP barrier, and a barrier waits for whichever of its threads the kernel has
descheduled. Measured here (bench/RESULTS.md, "LoRA fine-tuning"): 2 threads on 2 busy
cores gave 37 tokens/s where 1 thread gave 198. So `num_threads = 0` follows
OMP_NUM_THREADS when the user set it, and otherwise times a model-sized bf16 matmul with
each candidate count at the start of the run and keeps the fastest.
"""

from __future__ import annotations

import os
import statistics
import time

# Imported only inside training runs, never by the CLI at start-up.
import torch


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def training_threads(requested: int, dtype: str = "bfloat16") -> int:
    """`requested` if positive; else OMP_NUM_THREADS if set; else the fastest count for
    matmuls in `dtype` (the one training runs in)."""
    if requested > 0:
        return requested
    from_env = os.environ.get("OMP_NUM_THREADS", "")
    if from_env.isdigit() and int(from_env) > 0:
        return int(from_env)
    return fastest_thread_count(dtype=torch.float32 if dtype == "float32" else torch.bfloat16)


def fastest_thread_count(width: int = 576, rows: int = 256, repeats: int = 3, dtype=torch.bfloat16) -> int:
    """The candidate thread count (all cores, half of them, one) with the fastest median
    time for five [rows × width] · [width × 4·width] matmuls in `dtype` (a training step's
    shape at a quarter of its rows: enough to tell, quick to run). Leaves torch's
    thread count as it found it."""
    cores = available_cores()
    candidates = sorted({cores, max(1, cores // 2), 1}, reverse=True)
    if len(candidates) == 1:
        return candidates[0]
    previous = torch.get_num_threads()
    a = torch.randn(rows, width, dtype=dtype)
    b = torch.randn(width, 4 * width, dtype=dtype)
    times: dict[int, list[float]] = {n: [] for n in candidates}
    try:
        for _ in range(repeats):
            for n in candidates:  # alternate, so a change in load hits every candidate
                torch.set_num_threads(n)
                a @ b
                start = time.perf_counter()
                for _ in range(5):
                    a @ b
                times[n].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return min(candidates, key=lambda n: statistics.median(times[n]))
