"""What a pytest-xdist worker may use: one GPU each (round robin) instead of all on cuda:0, and a share of the CPUs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Mapping, MutableMapping, Sequence


def visible_gpus(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The GPUs this process may use, found without importing torch (which would fix the choice for good)."""
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [part.strip() for part in listed.split(",") if part.strip() and part.strip() != "-1"]
    proc = Path("/proc/driver/nvidia/gpus")
    if proc.is_dir():
        return [str(index) for index in range(len(list(proc.iterdir())))]
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        return [str(index) for index, line in enumerate(gpu for gpu in out.splitlines() if gpu.startswith("GPU "))]
    return []


def worker_gpu(device: str, worker_index: int, visible: Sequence[str]) -> str | None:
    """The CUDA_VISIBLE_DEVICES value for xdist worker `worker_index`, or None to leave the environment alone:
    only for --device auto/cuda (cuda:N is the user's own choice) and only with more than one GPU visible."""
    if device not in ("auto", "cuda") or len(visible) < 2 or worker_index < 0:
        return None
    return visible[worker_index % len(visible)]


def pin_worker_gpu(device: str, worker_index: int, environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Set CUDA_VISIBLE_DEVICES for this worker (call before torch initialises CUDA); returns the GPU chosen."""
    gpu = worker_gpu(device, worker_index, visible_gpus(environ))
    if gpu is not None:
        environ["CUDA_VISIBLE_DEVICES"] = gpu
    return gpu


def share_cpu_threads(
    worker_count: int, environ: MutableMapping[str, str] = os.environ, cpus: int | None = None
) -> int | None:
    """Give each of `worker_count` workers cpus/worker_count OpenMP threads (call before torch is imported): N workers
    that each spin a thread per core on the same cores slow each other down many times over. A value the user
    set in OMP_NUM_THREADS stands."""
    if worker_count < 2 or "OMP_NUM_THREADS" in environ:
        return None
    threads = max(1, (cpus or os.cpu_count() or 1) // worker_count)
    environ["OMP_NUM_THREADS"] = str(threads)
    return threads
