"""Set-up: everything a run derives from its spec and the pre-trained checkpoint, before
any step — the imported model, the sparsity plan, the mesh, the schedules' lengths and
the first states of the search and of the tuning stage.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from jackpot_jax import data as data_lib
from jackpot_jax.bounded_cache import BoundedCache
from jackpot_jax.run import compilation_cache, parallel
from jackpot_jax.search import (block_targets, masking, optim, schedules, scores as scores_lib,
                                 sparsity, steps)
from jackpot_jax.pytorch import ImportedModel, import_torch
from jackpot_jax.run.spec import RunSpec, check_checkpoint_fit, check_fit


# Jitted programs built from a model alone (`SearchSetup.program`), kept for the later runs
# of the process: a sweep's, a ladder's or a test session's runs of an equal model (Flax
# modules compare by their fields) trace and compile each once, not once per run. The
# oldest go beyond this many.
_programs = BoundedCache(16)


@dataclasses.dataclass(frozen=True)
class SearchSetup:
  """A run's fixed inputs: the frozen weights on their devices and what the plan keeps."""

  spec: RunSpec
  imported: ImportedModel
  params: Any
  batch_stats: Any
  plan: sparsity.SparsityPlan
  data_info: data_lib.DatasetInfo
  mesh: Any

  def program(self, name: str, build: Callable[[], Any]) -> Any:
    """The jitted program `name` of the run's model, built by `build()` (from the model and
    nothing else of the run) the first time this process asks for it (`_programs`)."""
    return _programs.get((name, self.model), build)

  @property
  def config(self):
    return self.spec.config

  @property
  def model(self):
    return self.imported.model

  @property
  def keep_counts(self) -> Any:
    return self.plan.keep_counts()

  @property
  def keep_ramp(self) -> schedules.KeepRamp | None:
    """search.sparsity_ramp's schedule of keep counts over the plan's, or None (off)."""
    search = self.config.search
    sizes = traverse_util.unflatten_dict({l.path + ("kernel",): l.size
                                          for l in self.plan.masked_layers})
    return schedules.keep_ramp(self.keep_counts, sizes, start_sparsity=search.start_sparsity,
                               sparsity=self.plan.target, ramp_fraction=search.sparsity_ramp,
                               total_steps=self.total_steps)

  @property
  def flip_cap(self) -> schedules.FlipCap | None:
    return schedules.flip_cap(self.config.search.max_flips_per_step, self.total_steps)

  @property
  def local_steps(self) -> int:
    """The steps of search.local_fraction's local stage at the start of the search (0: off)."""
    return block_targets.local_steps(self.config.search, self.total_steps)

  def epoch_steps(self, section: str) -> int:
    """Steps of one epoch of the search or the tuning stage (the last partial batch is
    dropped)."""
    return max(self.data_info.num_train // self.config[section].batch_size, 1)

  def stage_steps(self, section: str) -> int:
    """Steps of the search or the tuning stage: its epochs over the training split."""
    return max(int(round(self.config[section].num_epochs * self.epoch_steps(section))), 0)

  @property
  def steps_per_epoch(self) -> int:
    return self.epoch_steps("search")

  @property
  def total_steps(self) -> int:
    return self.stage_steps("search")

  def optimizer(self, section: str) -> optax.GradientTransformation:
    return optim.make_optimizer(self.config[section], max(self.stage_steps(section), 1))

  def shardings(self, tree: Any) -> Any:
    return parallel.config_shardings(tree, self.mesh, self.config.mesh)


def setup_search(spec: RunSpec) -> SearchSetup:
  """Reads the data's shape, checks the spec against it and the devices, then imports the
  checkpoint, checks it takes the data, and builds the plan: bad input fails before the
  checkpoint is loaded, or (a checkpoint that does not take the data) before it runs. The
  compilation cache is set first: the import already compiles."""
  config = spec.config
  compilation_cache.enable(config.compilation_cache_dir)
  data_info = data_lib.load_dataset_info(spec.data)
  mesh = parallel.make_mesh(config.mesh.model, config.mesh.num_devices)
  check_fit(spec, data_info, mesh.devices.size)
  imported = import_torch(config.model.checkpoint, config.model.name, config.model.num_classes,
                          strict=config.model.strict, model_kwargs=dict(config.model.kwargs))
  check_checkpoint_fit(spec, data_info, imported.input_shape)
  params = imported.variables["params"]
  plan = sparsity.plan_for(params, config.search, spec.model)
  setup = SearchSetup(
      spec=spec, imported=imported,
      params=jax.device_put(params, parallel.config_shardings(params, mesh, config.mesh)),
      batch_stats=imported.variables.get("batch_stats", {}), plan=plan, data_info=data_info,
      mesh=mesh)
  if setup.total_steps == 0 and config.search.num_epochs > 0:
    raise ValueError("search.num_epochs is too small for one step; raise it")
  return setup


def initial_search_state(setup: SearchSetup) -> steps.SearchState:
  """Scores from `search.score_init`, their masks, and a fresh optimizer state."""
  config = setup.config
  method = config.search.score_init
  fan_ins = None
  if scores_lib.needs_fan_ins(method):
    # Only a call shows a DenseGeneral kernel's input axes, which its fan-in needs.
    images = jax.ShapeDtypeStruct((1, *setup.data_info.image_shape), jnp.float32)
    fan_ins = scores_lib.kernel_fan_ins(setup.model, images, train=False)
  scores = scores_lib.init_scores(setup.params, setup.plan, method,
                                  jax.random.PRNGKey(config.search.seed), fan_ins)
  keep_counts, ramp = setup.keep_counts, setup.keep_ramp
  if ramp is not None:  # the first mask keeps the ramp's start counts
    keep_counts = jax.tree.unflatten(jax.tree.structure(keep_counts),
                                     [int(k) for k in ramp.counts_at(0)])
    if method == "magnitude":
      start_prune_counts = {l.name: l.size - int(k) for l, k
                            in zip(_masked_in_tree_order(setup), ramp.counts_at(0))}
      scores = scores_lib.ramp_start_scores(setup.params, setup.plan, scores,
                                            start_prune_counts)
  # The jitted step donates its state, and setup.batch_stats (and a teacher's, put from
  # them) must outlive it. Scores, masks and moments are new arrays.
  batch_stats = parallel.placed_copy(setup.batch_stats, setup.shardings(setup.batch_stats))
  state = steps.init_search_state(scores, keep_counts, batch_stats, setup.optimizer("search"),
                                  scores_lib.ranks_by_magnitude(config.search.score_init))
  return jax.device_put(state, setup.shardings(state), may_alias=False)


def _masked_in_tree_order(setup: SearchSetup) -> list[sparsity.PrunableLayer]:
  """The plan's masked layers in the keep-count tree's leaf order (a `KeepRamp`'s)."""
  by_key = {l.path + ("kernel",): l for l in setup.plan.masked_layers}
  paths = jax.tree_util.tree_flatten_with_path(setup.keep_counts)[0]
  return [by_key[tuple(k.key for k in path)] for path, _ in paths]


def teacher(setup: SearchSetup) -> steps.Teacher:
  """The dense network a distilling search learns from, on its devices: the pre-trained
  weights and BN statistics (the search's own statistics move away from these; the
  search state holds a copy of them, `initial_search_state`)."""
  return steps.Teacher(params=setup.params,
                       batch_stats=jax.device_put(setup.batch_stats,
                                                  setup.shardings(setup.batch_stats)))


def initial_tune_state(setup: SearchSetup, batch_stats: Any) -> steps.TuneState:
  """The "+T" stage's first state: the pre-trained weights and a fresh optimizer state."""
  state = steps.TuneState(step=jnp.zeros((), jnp.int32), params=setup.params,
                          opt_state=setup.optimizer("tune").init(setup.params),
                          batch_stats=batch_stats)
  # A copy: the jitted step donates its state, and the pre-trained weights must outlive it.
  return parallel.placed_copy(state, setup.shardings(state))


def magnitude_masks(setup: SearchSetup) -> Any:
  """The layer-wise magnitude-pruning mask at the plan's keep counts (the search's start)."""
  scores = scores_lib.init_scores(setup.params, setup.plan, "magnitude", jax.random.PRNGKey(0))
  return masking.compiled_masks(scores, setup.keep_counts)
