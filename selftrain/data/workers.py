"""Worker processes for curation's per-example work."""

from __future__ import annotations

import gc
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor


def process_pool(workers: int) -> ProcessPoolExecutor:
    """`workers` processes. Forking is fast, but forking a process that runs other threads
    (the API server, a job worker) can copy a lock one of them held; such a process starts
    its workers from a clean fork server instead. Workers run without the cyclic garbage
    collector: their work makes little or no cyclic garbage, and a forked worker walking the
    heap it shares with its parent would also copy every page it touches."""
    method = "fork" if threading.active_count() == 1 else "forkserver"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method),
                               initializer=gc.disable)
