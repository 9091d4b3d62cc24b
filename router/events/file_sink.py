"""Append-only JSON-lines event files, written off the request path.

Files are ``events-<UTC YYYYmmddTHHMMSSZ>-<seq>.jsonl`` (six-digit ``seq``), so sorting names
sorts them in write order; each line is one JSON record. Decisions are written in the compact
format 2 of :mod:`router.events.codec` (what decisions repeat once per file in a frame line,
probabilities and context features as float32; about 970 bytes instead of 6.6 KB for the bundled
29-model policy); ``format="json"`` writes format 1, one full record a line. :func:`read_events`
reads both. A file is rotated before a write would take it over ``max_bytes``. A sink never
appends to a file it did not create: after a crash the torn last line of the old file stays
last, and :func:`read_events` skips it with a warning.

Compressed rotation (``compress="zstd"``, config ``events.compress``): a file the sink has
finished with (rotated or closed) is compressed by the writer thread, off the request path, to
``<name>.jsonl.zst`` (zstandard, streaming, level ``zstd_level``), written under a temporary
name and renamed, and only then is the plain file removed; if compressing fails the plain file
stays (logged), so nothing accepted is lost. A crash between the rename and the removal leaves
both; readers take the compressed one. :func:`event_files` lists both kinds in write order and
:func:`read_event_bytes` opens either.

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
Compression = Literal["none", "zstd"]
FILE_GLOB = "events-*.jsonl"
ZSTD_SUFFIX = ".zst"


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
    compress : {"none", "zstd"}
        Compress each finished file to ``.jsonl.zst`` (module docstring).
    zstd_level : int
        zstandard's level, 1-22 (3 is zstandard's own default; sizes measured in
        experiments/results/events.md).
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
        compress: Compression = "none",
        zstd_level: int = 3,
    ) -> None:
        if compress not in ("none", "zstd"):
            raise ConfigError(f"compress must be 'none' or 'zstd', got {compress!r}")
        if not 1 <= zstd_level <= 22:
            raise ConfigError(f"zstd_level must be in [1, 22], got {zstd_level}")
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
        self.compress = compress
        self.zstd_level = zstd_level
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
            self._finish()

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
            self._finish()
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

    def _finish(self) -> None:
        """The file just closed (the last one opened): compressed when asked (writer thread)."""
        if self.compress != "zstd":
            return
        path = self.files_written[-1]
        try:
            compressed = compress_file(path, self.zstd_level, sync=self.fsync != "never")
        except Exception:  # OSError or zstandard's ZstdError: the writer must keep writing
            logger.exception("could not compress %s: the plain file is kept", path)
            return
        self.files_written[-1] = compressed  # finished before the next file is opened


def compress_file(path: Path, level: int = 3, sync: bool = True) -> Path:
    """``path`` -> ``path.zst`` (zstandard, streaming): written under a temporary name, synced,
    renamed, then ``path`` removed. Returns the compressed path."""
    import zstandard  # only a compressing sink needs it

    target = path.with_name(path.name + ZSTD_SUFFIX)
    partial = path.with_name(path.name + ZSTD_SUFFIX + ".tmp")
    try:
        with open(path, "rb") as src, open(partial, "wb") as dst:
            zstandard.ZstdCompressor(level=level).copy_stream(src, dst)
            dst.flush()
            if sync:
                os.fsync(dst.fileno())
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)  # a failed attempt leaves no half-written file
    path.unlink()
    return target


def event_files(directory: str | Path) -> list[Path]:
    """The event files of ``directory`` (plain and zstd-compressed) in write order; a file
    present in both forms (a crash between compressing and removing) is listed once, as the
    compressed one."""
    root = Path(directory)
    files = {p.name: p for p in root.glob(FILE_GLOB)}
    for packed in root.glob(FILE_GLOB + ZSTD_SUFFIX):
        files[packed.name[: -len(ZSTD_SUFFIX)]] = packed
    return [files[name] for name in sorted(files)]


def read_event_bytes(path: str | Path) -> bytes:
    """The whole content of an event file, decompressed when it is ``.zst``.

    Raises
    ------
    DatasetError
        A ``.zst`` file that is not valid zstandard data (named)."""
    path = Path(path)
    if path.suffix != ZSTD_SUFFIX:
        return path.read_bytes()
    import zstandard

    with open(path, "rb") as handle:
        reader = zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True)
        try:
            return bytes(reader.readall())
        except zstandard.ZstdError as exc:
            raise DatasetError(f"{path}: not a readable zstd file: {exc}") from exc


def event_lines(path: str | Path) -> list[bytes]:
    """The lines of an event file (plain or ``.zst``), without the empty piece after the final
    newline of a file written completely (a torn file's last line stays, for the caller)."""
    lines = read_event_bytes(path).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


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
        lines = event_lines(path)
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
