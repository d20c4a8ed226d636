"""Runs an iterator in a background thread so the training step never waits on input."""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_END = object()
_POLL_SECONDS = 0.1


class _Failure:
  """Carries an exception raised by the producer to the consumer."""

  def __init__(self, error: BaseException):
    self.error = error


def _produce(source: Iterator, items: queue.Queue, stop: threading.Event) -> None:
  def put(item) -> bool:
    # Polls rather than blocking forever, so that close() can end a producer waiting
    # on a full queue.
    while not stop.is_set():
      try:
        items.put(item, timeout=_POLL_SECONDS)
        return True
      except queue.Full:
        pass
    return False

  try:
    for item in source:
      if not put(item):
        return
    put(_END)
  except BaseException as error:  # pylint: disable=broad-except  (re-raised by __next__)
    put(_Failure(error))


class PrefetchIterator(Iterator[T]):
  """Yields the items of `source`, produced up to `size` ahead by a daemon thread.

  Exceptions of `source` are re-raised by `__next__`. `close()` (also called when the
  iterator is garbage-collected) stops the thread; the thread holds no reference to the
  iterator, so dropping the iterator is enough.
  """

  def __init__(self, source: Iterable[T], size: int = 2):
    self._stop = threading.Event()
    if size < 1:
      raise ValueError(f"prefetch size must be at least 1, got {size}")
    self._items: queue.Queue = queue.Queue(maxsize=size)
    self._finished = False
    self._thread = threading.Thread(target=_produce, args=(iter(source), self._items, self._stop),
                                    daemon=True, name="jackpot-prefetch")
    self._thread.start()

  def __next__(self) -> T:
    if self._finished:
      raise StopIteration
    item = self._items.get()
    if item is _END:
      self._finished = True
      raise StopIteration
    if isinstance(item, _Failure):
      self._finished = True
      raise item.error
    return item

  def close(self) -> None:
    """Stops the producer thread and drops the prefetched items."""
    self._finished = True
    self._stop.set()
    self._thread.join()

  def __del__(self):
    self._stop.set()


def prefetch(source: Iterable[T], size: int) -> Iterator[T]:
  """`source` prefetched `size` items ahead in a thread; `size` 0 returns it unthreaded."""
  return iter(source) if size == 0 else PrefetchIterator(source, size)
