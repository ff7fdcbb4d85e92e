# Copyright (c) the liverseg contributors. Licensed under the MIT License (see LICENSE).
"""Process settings: glibc's allocator for fast CPU work (:func:`keep_freed_memory`), and the end of a distributed
run (:func:`end_distributed`).

glibc serves every allocation above its mmap threshold (at most 32 MB) with fresh pages from the kernel and hands
them back on free, so each new full-resolution activation of a 3D network (19-38 MB for a 96 x 96 x 64 window with
8-16 channels) pays its page faults again. PyTorch's CPU tuning guide recommends jemalloc or tcmalloc for this;
:func:`keep_freed_memory` gets the same effect from glibc itself: large blocks come from the heap and freed memory
stays in the process for the next one. Measured on 2 cores (AU-Net+DS, one 96 x 96 x 64 window): 350 -> 255 ms.
The cost: the process keeps its peak memory until it exits, and the peak itself can grow where block sizes vary
(training: 4.03 GB against 3.29 GB, with steps 22 % faster; inference of a 512 x 512 x 200 CT: 1.21-1.25 GB against
1.21 GB, 2.2-2.5 s against 2.6 s).
Equivalent environment settings, for a process started by hand: ``MALLOC_MMAP_MAX_=0`` and
``MALLOC_TRIM_THRESHOLD_=2147483647``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys

import torch

logger = logging.getLogger(__name__)

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: the largest value, about 2 GB


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve large blocks from its heap and keep freed memory (see the module docstring).

    Returns True when applied, False where the C library is not glibc (macOS, Windows, musl): nothing changes there.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        logger.warning("mallopt refused the allocator settings; large allocations keep glibc's defaults")
    return ok


def end_distributed(network: torch.nn.Module | None = None) -> None:
    """End a ``torch.distributed`` run while Python is fully alive: a barrier, then ``network``'s hold on the
    process group released, then ``destroy_process_group``. Does nothing when no process group is initialized.

    ``DistributedDataParallel`` keeps the process group alive past ``destroy_process_group`` (through its reducer,
    its logger and its ``process_group`` attribute), so gloo's worker threads (``pt_gloo_runloop``,
    ``gloo_tcp_loop``) were still running when the interpreter shut down, and now and then a rank aborted there,
    after its run had finished (``terminate called without an active exception``, SIGABRT; the CPU torchrun test
    failed so in 2 of about 7 full test runs, and in 1 of 100 runs on its own). With the references dropped first,
    the group and its threads end here. ``network`` is unusable afterwards: call this last (the ``finalize`` of
    ``multi_gpu_train.json``).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()  # no rank tears down while another still runs its last collectives
    if isinstance(network, torch.nn.parallel.DistributedDataParallel):
        for name in ("reducer", "logger", "process_group"):
            if hasattr(network, name):
                delattr(network, name)
    dist.destroy_process_group()
    gc.collect()
