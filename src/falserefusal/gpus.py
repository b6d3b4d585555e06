"""Which GPU a pytest-xdist worker uses: one each (round robin), instead of every worker piling onto cuda:0."""

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
        return [str(index) for index, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]
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
