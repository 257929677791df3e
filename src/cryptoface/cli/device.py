"""The ``--device`` option shared by ``bench``, ``bench-match``, ``serve`` and ``demo``."""

from __future__ import annotations

import argparse

from cryptoface.backends.protocol import DEVICES, CkksParameters
from cryptoface.errors import ParameterError


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    """``--device``: where the CKKS engine runs."""
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="where the CKKS engine runs: gpu is desilofhe's CUDA mode (--backend desilofhe, "
                        "pip install 'cryptoface[gpu]', an NVIDIA GPU); default cpu")


def check_device(device: str, backend: str | None = "desilofhe") -> None:
    """Before anything starts: ParameterError for ``--device gpu`` with a backend that has no GPU mode, and
    BackendUnavailableError where desilofhe cannot start on the GPU (a test-sized engine is made and dropped)."""
    if device == "cpu":
        return
    if backend != "desilofhe":
        raise ParameterError(f"--device gpu runs desilofhe's CUDA mode; add --backend desilofhe (not {backend})")
    from cryptoface.backends import backend_class

    backend_class("desilofhe")(CkksParameters(log_ring=14, levels=4), device=device)
