"""Peak GPU memory while a benchmark runs, sampled every ``interval_s`` by a thread (the benchmark is the only
program on its card, so the device-wide figure is the run's)."""

from __future__ import annotations

import threading

from cryptoface.gpu import device_used_bytes


class DevicePeak:
    """Highest device memory in use while the ``with`` block runs (None without NVML)."""

    def __init__(self, index: int = 0, interval_s: float = 0.05) -> None:
        self.index = index
        self.interval_s = interval_s
        self.peak: int | None = device_used_bytes(index)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        used = device_used_bytes(self.index)
        if used is not None and (self.peak is None or used > self.peak):
            self.peak = used

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> DevicePeak:
        if self.peak is not None:
            self._thread = threading.Thread(target=self._poll, name="device-peak", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
