"""The NaN/Inf guard of the training loop: a record kept on device, read where the host syncs.

Every step is checked inside its jitted program without the host waiting for it; the
host reads the record only where it logs, evaluates or saves, and can still name the
first bad step. No checkpoint ever holds a step after it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jackpot_jax.errors import NonFiniteError

# [first bad step, loss bad, values bad]: no step has been bad yet.
ALL_FINITE = np.array([-1, 0, 0], np.int32)


def track(record: jax.Array, step: jax.Array, loss: jax.Array, values: Any) -> jax.Array:
  """`record` updated with this step, on device.

  `values` (scores or tuned weights) are checked leaf by leaf: their norm overflows
  float32 long before any of them does.
  """
  leaves = [x for x in jax.tree.leaves(values) if jnp.issubdtype(x.dtype, jnp.inexact)]
  values_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
  bad = jnp.stack([~jnp.isfinite(loss), ~values_finite]).astype(jnp.int32)
  now = jnp.concatenate([jnp.reshape(step, (1,)).astype(jnp.int32), bad])
  return jnp.where((record[0] < 0) & jnp.any(bad > 0), now, record)


def check(record: jax.Array, values: str, section: str, last_saved: int | None) -> None:
  """Raises NonFiniteError naming the first step whose loss or `values` held NaN or Inf."""
  step, loss_bad, values_bad = (int(v) for v in jax.device_get(record))
  if step < 0:
    return
  bad = " and ".join(name for name, flag in (("loss", loss_bad), (values, values_bad)) if flag)
  kept = "none saved yet" if last_saved is None else f"step {last_saved}"
  raise NonFiniteError(f"NaN or Inf in the {bad} at step {step}; stopped there, the last good "
                       f"checkpoint ({kept}) is kept; lower {section}.learning_rate and rerun "
                       "with --force to resume from it")
