"""Bounded asynchronous dispatch: a loop of jitted steps keeps at most two of them queued.

A jitted call returns before the device has run it, so a loop whose host side is faster
than its steps queues more and more of them. That must be bounded:
- each queued step holds its input batch in device memory;
- XLA's CPU client deadlocks. It runs a multi-device program's per-device parts on one
  pool of max(cores, devices) threads, and a launch that finds its device at the limit
  of 32 programs in flight blocks on a pool thread. When such blocked launches hold the
  threads that an earlier program's remaining devices need to reach a collective (every
  BatchNorm statistic and every accuracy sum is an all-reduce), the collective never
  completes, and after 40 s XLA's rendezvous watchdog ends the process with abort():
  "Fatal Python error: Aborted" with no Python exception.
Two steps in flight keep the host's work (input, dispatch) overlapped with the device's.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp

STEPS_IN_FLIGHT = 2


class DispatchWindow:
  """Waits for the oldest dispatched step once more than `limit` are outstanding."""

  def __init__(self, limit: int = STEPS_IN_FLIGHT):
    if limit < 1:
      raise ValueError(f"at least one step must be allowed in flight, got {limit}")
    self.limit = limit
    self._outstanding: collections.deque = collections.deque()

  def admit(self, outputs: Any) -> None:
    """Records the outputs of a step just dispatched; blocks while over the limit.

    Args:
      outputs: arrays the step returns and no later step donates (metrics, sums).
    """
    self._outstanding.append(outputs)
    while len(self._outstanding) > self.limit:
      jax.block_until_ready(self._outstanding.popleft())


def accumulator(fn: Callable[..., Any]) -> Callable[..., Any]:
  """`(total, frozen, batch) -> total + fn(*frozen, batch)` (total None: the first value),
  jitted; built once and reused, it compiles once.

  The running sum is taken inside the one program per batch: adding trees eagerly would
  dispatch one multi-device program per leaf beside `fn`'s all-reduces, the deadlock
  above. `frozen` arrays are arguments, not closures, so they are not baked into it.
  """

  # `fn` jitted on its own as well: the first batch's program and the later batches' one
  # then share its trace, rather than tracing the whole network twice.
  value_of = jax.jit(fn)

  def add(total, frozen, batch):
    value = value_of(*frozen, batch)
    return value if total is None else jax.tree.map(jnp.add, total, value)

  return jax.jit(add)


def sum_over_batches(accumulate: Callable[..., Any], batches: Iterable[Any],
                     *frozen: Any) -> tuple[Any, int]:
  """(the sum over `batches` that `accumulate` (an `accumulator`) takes, as a tree of host
  arrays, the batch count); None and 0 for no batch. At most `STEPS_IN_FLIGHT` batches
  are outstanding."""
  total, count = None, 0
  window = DispatchWindow()
  for batch in batches:
    total = accumulate(total, frozen, batch)
    window.admit(total)
    count += 1
  return jax.device_get(total), count


def mean_over_batches(fn: Callable[..., Any], batches: Iterable[Any], *frozen: Any) -> Any:
  """The mean of `fn(*frozen, batch)` over `batches`, a tree of host arrays."""
  return mean_of_sums(accumulator(fn), batches, *frozen)


def mean_of_sums(accumulate: Callable[..., Any], batches: Iterable[Any], *frozen: Any) -> Any:
  """`mean_over_batches` with an `accumulator` built once and reused (compiled once)."""
  total, count = sum_over_batches(accumulate, batches, *frozen)
  return jax.tree.map(lambda x: x / count, total)
