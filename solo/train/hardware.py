"""What the machine offers a training run: which device it computes on, the GPU's peak, the memory it used."""

from __future__ import annotations

import ctypes
import resource
from pathlib import Path

import torch

from solo.train.config import TrainConfig

# Dense bf16 peak of GPUs our users train on, for MFU. A GPU not listed reports no MFU.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.2,
               "RTX 3090": 71.0, "A10": 125.0, "L4": 121.0}


def use_cuda(config: TrainConfig) -> bool:
    return config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())


def peak_tflops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def host_peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is KiB on Linux


def openmp_threads() -> int:
    """The threads an OpenMP parallel region of this process uses: what DeepSpeed's CPU Adam and torch's CPU
    kernels compute with. Each OpenMP runtime loaded (torch bundles its own libgomp; DeepSpeed's compiled ops link
    the system's) read OMP_NUM_THREADS when it started; asked directly, the smallest answer is returned."""
    runtimes = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if any(name in Path(path).name for name in ("libgomp", "libiomp", "libomp")):
                runtimes.add(path)
    answers = []
    for path in sorted(runtimes):
        try:
            answers.append(ctypes.CDLL(path).omp_get_max_threads())
        except (OSError, AttributeError):
            continue
    return min(answers) if answers else torch.get_num_threads()
