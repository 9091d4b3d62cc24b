"""The background writer shared by the sinks: a bounded queue drained by one thread.

The request path only does ``queue.put``; serialisation and I/O happen on the writer thread.
Accepting is never silent about failure: :meth:`BackgroundEventWriter.emit` either enqueues
the event (and then it is written unless the process dies first) or raises
:class:`~features.errors.EventLogError` so the caller can refuse the request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from types import TracebackType

from features.errors import ConfigError, EventLogError, EventLogFullError
from router.events.models import Emitted

logger = logging.getLogger(__name__)

_STOP = object()


class BackgroundEventWriter(ABC):
    """Base of the event sinks.

    Subclasses implement :meth:`_write_batch` (called on the writer thread with up to
    ``batch_size`` events), and optionally :meth:`_on_idle` (called about every ``idle_s``
    seconds when nothing arrives) and :meth:`_close_resources`.

    Parameters
    ----------
    queue_size : int
        Capacity of the bounded queue between the request path and the writer.
    put_timeout_s : float
        How long :meth:`emit` waits for room before raising ``EventLogFullError``.
    batch_size : int
        Most events handed to one :meth:`_write_batch` call.
    idle_s : float
        Poll period of the writer when the queue is empty.
    linger_s : float
        After writing a batch smaller than ``batch_size`` the writer waits this long before
        taking the next one, so that under load events are written in batches and the request
        path's ``queue.put`` rarely has to wake the writer thread (each wake-up is a futex call
        and a GIL hand-over on the serving thread, a measurable share of the gateway's CPU at
        2 events per request). Accepted events reach the sink that much later; 0 disables it.
    """

    def __init__(
        self,
        queue_size: int = 10_000,
        put_timeout_s: float = 0.05,
        batch_size: int = 512,
        idle_s: float = 0.2,
        linger_s: float = 0.01,
    ) -> None:
        if queue_size < 1:
            raise ConfigError(f"queue_size must be >= 1, got {queue_size}")
        if put_timeout_s < 0:
            raise ConfigError(f"put_timeout_s must be >= 0, got {put_timeout_s}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if linger_s < 0:
            raise ConfigError(f"linger_s must be >= 0, got {linger_s}")
        self.queue_size = queue_size
        self.put_timeout_s = put_timeout_s
        self.batch_size = batch_size
        self.idle_s = idle_s
        self.linger_s = linger_s
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._closed = False
        self._close_lock = threading.Lock()
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"{type(self).__name__}-writer", daemon=True
        )

    def _start(self) -> None:
        """Start the writer; subclasses call it at the end of ``__init__``."""
        self._thread.start()

    # ---- request path --------------------------------------------------------------------
    def emit(self, event: Emitted) -> None:
        """Hand ``event`` to the writer.

        Raises
        ------
        EventLogFullError
            The queue stayed full for ``put_timeout_s``: the event was NOT accepted.
        EventLogError
            The sink is closed or its writer failed: the event was NOT accepted.
        """
        if self._closed:
            raise EventLogError(f"{type(self).__name__} is closed; event {event.event_id} refused")
        if self._error is not None:
            raise EventLogError(f"event log writer failed: {self._error!r}") from self._error
        try:
            self._queue.put(event, timeout=self.put_timeout_s)
        except queue.Full:
            raise EventLogFullError(
                f"event log queue full ({self.queue_size} events) for {self.put_timeout_s} s; "
                f"event {event.event_id} refused"
            ) from None

    # ---- lifecycle -----------------------------------------------------------------------
    def flush(self) -> None:
        """Block until every accepted event has been written (see the subclass for durability).

        Raises
        ------
        EventLogError
            If the writer failed (the events it still held were not written).
        """
        # not queue.join(): it would hang forever if the writer died with events still queued
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks and self._thread.is_alive():
                self._queue.all_tasks_done.wait(0.1)
        self._raise_if_failed()

    def close(self) -> None:
        """Stop accepting, write everything already accepted, release resources. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        # wait for room rather than drop: the writer is draining, so room appears and nothing
        # accepted is lost; the loop only guards against a writer that died meanwhile
        while self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                continue
        if self._thread.ident is not None:
            self._thread.join()
        self._raise_if_failed()

    def __enter__(self) -> BackgroundEventWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pending(self) -> int:
        """Events accepted but not yet handed to the writer (approximate)."""
        return self._queue.qsize()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise EventLogError(f"event log writer failed: {self._error!r}") from self._error

    # ---- writer thread -------------------------------------------------------------------
    def _run(self) -> None:
        stop = False
        try:
            while not stop:
                try:
                    first = self._queue.get(timeout=self.idle_s)
                except queue.Empty:
                    self._on_idle()
                    continue
                items = [first]
                # drain what is already there so one write / transaction carries many events
                while len(items) < self.batch_size:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                events: list[Emitted] = [e for e in items if e is not _STOP]  # type: ignore[misc]
                stop = len(events) != len(items)
                try:
                    if events:
                        self._write_batch(events)
                except BaseException as exc:
                    # recorded before task_done() so a flush() woken by it sees the failure
                    self._error = exc
                    raise
                finally:
                    for _ in items:
                        self._queue.task_done()
                if not stop and len(items) < self.batch_size and self.linger_s > 0:
                    time.sleep(self.linger_s)  # let the next batch gather (see linger_s)
        except BaseException as exc:  # the thread must record why it stopped, whatever it was
            logger.exception("event log writer stopped")
            if self._error is None:
                self._error = exc
            self._release_waiters()
        finally:
            try:
                self._close_resources()
            except Exception as exc:
                logger.exception("event log: closing resources failed")
                if self._error is None:
                    self._error = exc

    def _release_waiters(self) -> None:
        # after a failure nobody will drain the queue: mark everything done so flush() returns
        # (and raises) instead of hanging; those events are reported lost via the error
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return
            self._queue.task_done()

    @abstractmethod
    def _write_batch(self, events: list[Emitted]) -> None:
        """Persist ``events`` in order (writer thread only)."""

    def _on_idle(self) -> None:
        """Periodic work when the queue is empty (writer thread only)."""
        return None

    def _close_resources(self) -> None:
        """Flush and release files or connections (writer thread, once, at the end)."""
        return None
