"""Peak resident memory of this process and its children (the Dask workers), per phase."""

from __future__ import annotations

import threading

import psutil


class PeakMemory:
    """Samples the resident memory of this process and its children (Dask workers) in a thread.

    Attributes after exit: ``client_mb``, ``workers_mb`` (peak of their sum), ``total_mb``
    (peak of client + workers at one instant).
    """

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.client_mb = self.workers_mb = self.total_mb = 0.0
        self.phases: dict[str, float] = {}  # phase -> peak total MB while it ran
        self._phase_peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        process = psutil.Process()
        client = process.memory_info().rss
        workers = 0
        for child in process.children(recursive=True):
            try:
                workers += child.memory_info().rss
            except psutil.Error:
                continue
        mb = 1024.0 * 1024.0
        self.client_mb = max(self.client_mb, client / mb)
        self.workers_mb = max(self.workers_mb, workers / mb)
        self.total_mb = max(self.total_mb, (client + workers) / mb)
        self._phase_peak = max(self._phase_peak, (client + workers) / mb)

    def end_phase(self, name: str) -> None:
        """Record the peak total since the previous phase ended under ``name``."""
        self.sample()
        self.phases[name] = self._phase_peak
        self._phase_peak = 0.0
