"""Device mesh and shardings: batch split over `data`, state replicated or FSDP-sharded.

Under `jax.jit` with these shardings BatchNorm's batch mean is a mean over the global
batch, so statistics are synchronised across devices without any explicit collective.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA, MODEL = "data", "model"


def make_mesh(model_axis: int = 1, num_devices: int = 0) -> Mesh:
  """A (data, model) mesh; `model_axis` > 1 enables FSDP-style sharding.

  Args:
    model_axis: devices along the `model` axis.
    num_devices: use the first this many devices (0: all of them).
  """
  available = jax.devices()
  if num_devices < 0 or num_devices > len(available):
    raise ValueError(f"mesh.num_devices={num_devices} but {len(available)} devices are "
                     "available; use 0 for all")
  devices = np.asarray(available[:num_devices] if num_devices else available)
  if devices.size % model_axis:
    raise ValueError(f"mesh.model={model_axis} does not divide the {devices.size} devices")
  return Mesh(devices.reshape(devices.size // model_axis, model_axis), (DATA, MODEL))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device of the mesh."""
  return NamedSharding(mesh, P((DATA, MODEL)))


def _fsdp_spec(shape: tuple[int, ...], model_size: int, min_size: int) -> P:
  """Shards the largest axis divisible by the model axis; small leaves stay replicated."""
  if model_size == 1 or int(np.prod(shape)) < min_size:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % model_size == 0:
      spec = [None] * len(shape)
      spec[axis] = MODEL
      return P(*spec)
  return P()


def config_shardings(tree: Any, mesh: Mesh, mesh_config: Any) -> Any:
  """`tree_shardings` as the config's mesh section asks (mesh.fsdp, mesh.fsdp_min_size)."""
  return tree_shardings(tree, mesh, fsdp=mesh_config.fsdp, min_size=mesh_config.fsdp_min_size)


def tree_shardings(tree: Any, mesh: Mesh, fsdp: bool = False, min_size: int = 2 ** 16) -> Any:
  """Per-leaf shardings: replicated, or with `fsdp` large leaves split over `model`."""
  model_size = mesh.shape[MODEL]
  return jax.tree.map(
      lambda leaf: NamedSharding(mesh, _fsdp_spec(np.shape(leaf), model_size, min_size)
                                 if fsdp else P()), tree)


def abstract_arrays(tree: Any, shardings: Any) -> Any:
  """Shape, dtype and sharding of each leaf: the target Orbax restores onto, so a
  checkpoint written on one device count lands on this mesh's."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def placed_copy(tree: Any, shardings: Any) -> Any:
  """`tree` placed on `shardings` in buffers of its own, for state a jitted step donates.

  `jax.device_put(..., may_alias=False)` is not enough: replicating a single-device array
  over a mesh reuses its buffer for the first device's shard (JAX 0.10), so a state put
  from arrays the run keeps (the pre-trained weights and BN statistics, which a
  distilling search's teacher reads too) would share memory that the step's donation
  hands over. Each leaf is copied on its device first.
  """
  return jax.device_put(jax.tree.map(jnp.copy, tree), shardings, may_alias=False)


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  if batch_size % mesh.devices.size:
    raise ValueError(f"batch size {batch_size} is not divisible by the {mesh.devices.size} "
                     "devices; choose a multiple of the device count")


# Activation dtypes (`model.dtype`): the images are cast to it on the host, so the whole
# network computes in it (layers follow their input's dtype) and half as many bytes travel.
IMAGE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def put_batch(local_batch: dict, mesh: Mesh, image_dtype: str = "float32") -> dict:
  """Assembles a global batch from this process's slice (multi-host ready), its images
  (if any: token batches have none) cast to `image_dtype` (a key of `IMAGE_DTYPES`)."""
  sharding = batch_sharding(mesh)
  if "image" in local_batch:
    local_batch = {**local_batch, "image": np.asarray(local_batch["image"]).astype(
        IMAGE_DTYPES[image_dtype])}
  if jax.process_count() == 1:
    return jax.device_put(local_batch, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Starts JAX's own multi-process runtime.

  With no arguments JAX detects the cluster itself (TPU VM pods, SLURM, Open MPI); the
  explicit arguments are for hand-launched processes, e.g. two on localhost in tests.
  """
  kwargs = {}
  if coordinator_address:
    kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id)
  jax.distributed.initialize(**kwargs)
