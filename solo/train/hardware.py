"""What the machine offers a training run: which device it computes on, the GPU's peak, the memory it used."""

from __future__ import annotations

import resource

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
