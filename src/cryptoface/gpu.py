"""The GPU as NVML reports it: the card's name, its memory and how much of it is in use.

Read through NVML (``nvidia-ml-py``, shipped with the NVIDIA stack) when it is importable; without it, or
without a GPU, every function returns None so that callers say so instead of guessing. Figures are the whole
device's, all processes together.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DeviceInfo:
    """One GPU as NVML names it, with its memory in bytes."""

    name: str
    total_bytes: int
    driver: str


@functools.lru_cache(maxsize=1)
def _nvml() -> Any:
    """The initialised NVML module, once per process (samplers call this every few milliseconds), or None."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver or no device: NVML's own error classes vary by version
        return None
    return pynvml


def device_info(index: int = 0) -> DeviceInfo | None:
    """The GPU at ``index``, or None where NVML or the device is missing."""
    nv = _nvml()
    if nv is None:
        return None
    h = nv.nvmlDeviceGetHandleByIndex(index)
    name = nv.nvmlDeviceGetName(h)
    driver = nv.nvmlSystemGetDriverVersion()
    return DeviceInfo(name.decode() if isinstance(name, bytes) else str(name),
                      int(nv.nvmlDeviceGetMemoryInfo(h).total),
                      driver.decode() if isinstance(driver, bytes) else str(driver))


def device_used_bytes(index: int = 0) -> int | None:
    """Bytes in use on the GPU now (all processes), or None."""
    nv = _nvml()
    if nv is None:
        return None
    return int(nv.nvmlDeviceGetMemoryInfo(nv.nvmlDeviceGetHandleByIndex(index)).used)
