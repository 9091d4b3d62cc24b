"""Append-only JSON-lines event files, written off the request path.

Files are ``events-<UTC YYYYmmddTHHMMSSZ>-<seq>.jsonl`` (six-digit ``seq``), so sorting names
sorts them in write order; each line is one JSON record. Decisions are written in the compact
format 2 of :mod:`router.events.codec` (what decisions repeat once per file in a frame line,
probabilities and context features as float32; about 970 bytes instead of 6.6 KB for the bundled
29-model policy); ``format="json"`` writes format 1, one full record a line. :func:`read_events`
reads both. A file is rotated before a write would take it over ``max_bytes``. A sink never
appends to a file it did not create: after a crash the torn last line of the old file stays
last, and :func:`read_events` skips it with a warning.

Durability (what a crash can lose)
----------------------------------
An event accepted by :meth:`FileEventSink.emit` sits in the in-memory queue until the writer
thread writes it (normally within milliseconds). After each batch the writer flushes Python's
buffer to the OS, so a *process* crash (kill -9, OOM) loses only events still in the queue,
under every policy. A *power cut or kernel crash* also loses what the OS had not yet put on
disk, which depends on ``fsync``:

``"always"``
    ``os.fsync`` after every batch: loses only the queued events and the batch being written.
    Costs one disk sync per batch (batches grow under load, so throughput holds up).
``"interval"`` (default)
    ``os.fsync`` at most every ``fsync_interval_s`` seconds (and on rotation and close): loses
    up to about ``fsync_interval_s`` seconds of events plus the queue.
``"never"``
    Leaves it to the OS (Linux writes dirty pages back within about 30 s by default): loses up
    to that much. Only for tests and throw-away logs.

In every case a torn last line can result, which the reader tolerates.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Literal

from features.errors import ConfigError, DatasetError
from router.events.codec import CompactEncoder, RecordReader, format1_line
from router.events.models import Emitted, Event, event_from_record
from router.events.writer import BackgroundEventWriter

logger = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "interval", "never"]
LineFormat = Literal["compact", "json"]
FILE_GLOB = "events-*.jsonl"


class FileEventSink(BackgroundEventWriter):
    """Event sink writing rotated JSON-lines files in ``directory``.

    Parameters
    ----------
    directory : str or Path
        Created if missing.
    max_bytes : int
        Rotate before a file would exceed this size.
    queue_size, put_timeout_s
        See :class:`~router.events.writer.BackgroundEventWriter`.
    fsync : {"always", "interval", "never"}
        Durability policy (module docstring).
    fsync_interval_s : float
        Period of ``fsync="interval"``.
    format : {"compact", "json"}
        Format 2 (default) or format 1 of :mod:`router.events.codec`.
    """

    def __init__(
        self,
        directory: str | Path,
        max_bytes: int = 64 * 1024 * 1024,
        queue_size: int = 10_000,
        fsync: FsyncPolicy = "interval",
        fsync_interval_s: float = 1.0,
        put_timeout_s: float = 0.05,
        format: LineFormat = "compact",
    ) -> None:
        if format not in ("compact", "json"):
            raise ConfigError(f"format must be 'compact' or 'json', got {format!r}")
        if fsync not in ("always", "interval", "never"):
            raise ConfigError(f"fsync must be 'always', 'interval' or 'never', got {fsync!r}")
        if max_bytes < 1:
            raise ConfigError(f"max_bytes must be >= 1, got {max_bytes}")
        if fsync_interval_s <= 0:
            raise ConfigError(f"fsync_interval_s must be > 0, got {fsync_interval_s}")
        super().__init__(
            queue_size=queue_size,
            put_timeout_s=put_timeout_s,
            idle_s=min(0.2, fsync_interval_s),
        )
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.fsync_interval_s = fsync_interval_s
        self.format = format
        self._encoder = CompactEncoder() if format == "compact" else None
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] | None = None
        self._size = 0
        self._seq = 0
        self._dirty = False
        self._last_sync = time.monotonic()
        self.files_written: list[Path] = []
        self._start()

    # ---- writer thread -------------------------------------------------------------------
    def _write_batch(self, events: list[Emitted]) -> None:
        encoder = self._encoder
        for event in events:
            if self._file is None or (encoder is not None and encoder.full):
                self._rotate()
            line = encoder.encode(event) if encoder is not None else format1_line(event)
            if self._size and self._size + len(line) > self.max_bytes:
                self._rotate()  # a new file holds no frames: encode again
                line = encoder.encode(event) if encoder is not None else line
            assert self._file is not None
            self._write_line(line)
            self._size += len(line)
        assert self._file is not None
        self._file.flush()
        self._dirty = True
        overdue = time.monotonic() - self._last_sync >= self.fsync_interval_s
        if self.fsync == "always" or (self.fsync == "interval" and overdue):
            self._sync()

    def _write_line(self, line: bytes) -> None:
        # a seam for tests that need to stall the writer
        assert self._file is not None
        self._file.write(line)

    def _on_idle(self) -> None:
        if self.fsync == "interval" and self._dirty:
            self._sync()

    def _close_resources(self) -> None:
        if self._file is not None:
            self._file.flush()
            if self.fsync != "never":
                self._sync()
            self._file.close()
            self._file = None

    def _sync(self) -> None:
        assert self._file is not None
        os.fsync(self._file.fileno())
        self._dirty = False
        self._last_sync = time.monotonic()

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.flush()
            if self.fsync != "never":
                self._sync()
            self._file.close()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        while True:
            self._seq += 1
            path = self.directory / f"events-{stamp}-{self._seq:06d}.jsonl"
            try:
                # "xb": never append to an existing file (another sink's, or a torn one)
                self._file = open(path, "xb")  # noqa: SIM115 - lives across batches
                break
            except FileExistsError:
                continue
        self._size = 0
        if self._encoder is not None:
            self._encoder.reset()
        self.files_written.append(path)


def event_files(directory: str | Path) -> list[Path]:
    """The event files of ``directory`` in write order."""
    return sorted(Path(directory).glob(FILE_GLOB))


def read_events(directory: str | Path) -> Iterator[Event]:
    """Yield every event of every file in ``directory``, in write order (format 1 or 2 lines of
    :mod:`router.events.codec`; decisions of format 2 come back with their probabilities and
    context features rounded to float32).

    A malformed *last* line of a file (torn by a crash) is skipped with a warning.

    Raises
    ------
    DatasetError
        A malformed line that is not the last of its file (corruption, not a torn write),
        named by file and line number.
    """
    for path in event_files(directory):
        with open(path, "rb") as handle:
            lines = handle.read().split(b"\n")
        # a file written completely ends with "\n", so the final split piece is empty
        if lines and lines[-1] == b"":
            lines.pop()
        reader = RecordReader()
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                record = reader.expand(json.loads(raw))
                if record is None:  # a frame
                    continue
                event = event_from_record(record)
            except ValueError as exc:  # JSONDecodeError and pydantic's ValidationError
                if number == len(lines):
                    logger.warning("skipping torn last line %d of %s: %s", number, path, exc)
                    continue
                raise DatasetError(f"{path}:{number}: malformed event line: {exc}") from exc
            yield event
