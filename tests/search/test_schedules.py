import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jackpot_jax.search import schedules

RAMP = schedules.KeepRamp(start=(1000, 77, 9), end=(100, 7, 9), steps=10)


def _cubic(start: int, end: int, t: int, steps: int) -> int:
  """Zhu & Gupta's schedule in keep counts, in exact arithmetic."""
  return end + math.floor((start - end) * (1 - min(t, steps) / steps) ** 3)


@pytest.mark.parametrize("t", [0, 5, 10, 11, 500])
def test_ramp_keep_counts_follow_the_cubic_at_the_start_mid_ramp_and_after_it(t):
  expected = [_cubic(s, e, t, RAMP.steps) for s, e in zip(RAMP.start, RAMP.end)]
  assert RAMP.counts_at(t).tolist() == expected
  assert np.asarray(jax.jit(RAMP.counts)(jnp.int32(t))).tolist() == expected
  if t == 5:  # (1/2)^3 of the way: an eighth of the gap left
    assert expected == [100 + 900 // 8, 7 + 70 // 8, 9]


def test_compiled_ramp_keep_counts_equal_the_hosts_at_every_step():
  """Compiled, x / steps must not become x * (1 / steps), which rounds differently."""
  ramp = schedules.KeepRamp(start=(4_000_000, 1_234_567), end=(400_000, 12_345), steps=997)
  counts = jax.jit(ramp.counts)
  for t in range(0, 1100, 7):
    np.testing.assert_array_equal(np.asarray(counts(jnp.int32(t))), ramp.counts_at(t))
    assert all(e <= c <= s for s, e, c in zip(ramp.start, ramp.end, ramp.counts_at(t)))


def test_ramp_start_scales_each_layers_planned_prune_count():
  keep_counts = {"a": {"kernel": 10}, "b": {"kernel": 200}}
  sizes = {"a": {"kernel": 100}, "b": {"kernel": 1000}}
  ramp = schedules.keep_ramp(keep_counts, sizes, start_sparsity=0.45, sparsity=0.9,
                             ramp_fraction=0.25, total_steps=40)
  # Half of each planned prune count: 90 -> 45 and 800 -> 400.
  assert ramp == schedules.KeepRamp(start=(55, 600), end=(10, 200), steps=10)
  assert schedules.keep_ramp(keep_counts, sizes, start_sparsity=0.0, sparsity=0.9,
                             ramp_fraction=0.0, total_steps=40) is None


@pytest.mark.parametrize("total_steps", [5, 10, 49])
def test_flip_cap_decays_quartically_from_its_maximum_to_one(total_steps):
  cap = schedules.FlipCap(max_flips=12, total_steps=total_steps)
  expected = [math.ceil(12 * (1 - t / total_steps) ** 4) for t in range(total_steps)]
  assert [cap.cap_at(t) for t in range(total_steps)] == expected
  assert expected[0] == 12 and expected[-1] == 1 and expected == sorted(expected, reverse=True)
  compiled = jax.jit(cap.cap)
  assert [int(compiled(jnp.int32(t))) for t in range(total_steps)] == expected
  assert schedules.flip_cap(0, 10) is None
