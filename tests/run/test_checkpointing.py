"""Checkpoints of a replicated state: small arrays are written by one replica (no slice
programs to compile), large ones in one slice per replica, and both restore exactly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jackpot_jax.run import checkpointing, parallel


def test_small_replicated_arrays_are_saved_unsliced_large_ones_in_slices_and_both_restore(
    tmp_path, monkeypatch):
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  replicated = NamedSharding(mesh, PartitionSpec())
  per_replica = checkpointing.MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL // 4  # float32 entries
  state = jax.device_put({"kernel": jnp.arange(72.0).reshape(3, 3, 8),
                          "bias": jnp.ones(5), "steps": jnp.int32(7),
                          "large": jnp.arange(8 * per_replica, dtype=jnp.float32)}, replicated)
  sliced = []
  real = jax.lax.slice_in_dim

  def recorded(array, *args, **kwargs):
    sliced.append(array.shape)
    return real(array, *args, **kwargs)

  monkeypatch.setattr(jax.lax, "slice_in_dim", recorded)
  with checkpointing.SearchCheckpoints(tmp_path / "checkpoints", 1, writer=True) as ckpts:
    ckpts.save(1, state, {"wall_seconds": 0.0})
  assert sliced == [(8 * per_replica,)] * 8  # only the large array, one slice per replica
  shardings = jax.tree.map(lambda _: replicated, state)
  with checkpointing.SearchCheckpoints(tmp_path / "checkpoints", 1) as ckpts:
    restored, meta, _ = ckpts.restore_latest(parallel.abstract_arrays(state, shardings))
  assert meta["wall_seconds"] == 0.0
  for name, value in state.items():
    np.testing.assert_array_equal(restored[name], value)
    assert restored[name].sharding == replicated
