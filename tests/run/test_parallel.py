"""The search on a device mesh: 8 simulated CPU devices against 1, and checkpoints across them."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jackpot_jax.run import parallel, setup as setup_lib, job

from conftest import final_search_state, setup_of, tiny_config

pytestmark = pytest.mark.eight_devices


def _on(config, num_devices: int):
  config = config.copy_and_resolve_references()
  config.mesh.num_devices = num_devices
  return config


def _assert_close(a, b, atol=1e-5):
  np.testing.assert_array_equal(jax.tree.leaves(a.masks)[0].shape, jax.tree.leaves(b.masks)[0].shape)
  for x, y in zip(jax.tree.leaves(a.scores), jax.tree.leaves(b.scores), strict=True):
    np.testing.assert_allclose(x, y, rtol=0, atol=atol)
  for x, y in zip(jax.tree.leaves(a.batch_stats), jax.tree.leaves(b.batch_stats), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def one_device_state(tiny_job, tmp_path_factory):
  """The final search state of `tiny_config` on one device: what every device count and
  every move between them must reproduce."""
  config = _on(tiny_config(tiny_job), 1)
  workdir = tmp_path_factory.mktemp("one_device")
  job.search_and_evaluate(config, workdir)
  return final_search_state(config, workdir)


@pytest.fixture(scope="module")
def eight_device_run(tiny_job, tmp_path_factory):
  """The workdir of an uninterrupted `tiny_config` search on eight devices (None where this
  process has fewer: its tests then run in a child pytest that has them, see conftest)."""
  if jax.device_count() < 8:
    return None
  workdir = tmp_path_factory.mktemp("eight") / "run"
  job.search_and_evaluate(_on(tiny_config(tiny_job), 8), workdir)
  return workdir


def test_eight_devices_give_the_one_device_scores(tiny_job, eight_device_run, one_device_state):
  one = one_device_state
  eight = final_search_state(_on(tiny_config(tiny_job), 8), eight_device_run)
  assert int(one.step) == int(eight.step) == 6
  _assert_close(one, eight)


def test_a_resumed_eight_device_search_ends_bitwise_equal_to_an_uninterrupted_one(
    tiny_job, eight_device_run, tmp_path):
  config = _on(tiny_config(tiny_job), 8)
  assert job.search_and_evaluate(config, tmp_path / "resumed", stop_after=3) == {
      "stopped_at": 3}
  job.search_and_evaluate(config, tmp_path / "resumed")
  straight = final_search_state(config, eight_device_run)
  resumed = final_search_state(config, tmp_path / "resumed")
  assert int(straight.step) == int(resumed.step) == 6
  for a, b in zip(jax.tree.leaves((straight.scores, straight.masks, straight.batch_stats)),
                  jax.tree.leaves((resumed.scores, resumed.masks, resumed.batch_stats)),
                  strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("first,second", [(8, 1), (1, 8)])
def test_checkpoint_restores_onto_another_device_count(tiny_job, tmp_path, one_device_state,
                                                       first, second):
  config = tiny_config(tiny_job)
  assert job.search_and_evaluate(_on(config, first), tmp_path / "moved", stop_after=2) == {
      "stopped_at": 2}
  job.search_and_evaluate(_on(config, second), tmp_path / "moved")
  _assert_close(one_device_state, final_search_state(_on(config, second), tmp_path / "moved"))


def test_batch_must_divide_over_devices():
  with pytest.raises(ValueError, match="batch size 12 is not divisible by the 8 devices"):
    parallel.check_batch_size(12, parallel.make_mesh(num_devices=8))


def test_fsdp_sharded_scores_give_the_one_device_scores(tiny_job, tmp_path):
  # Two steps (the second applies the first's sharded momentum): sharded sums round
  # differently, so over more steps a score may cross a near-tied one on one side of the
  # rounding only, and the two runs' masks, then scores, part by more than rounding.
  config = tiny_config(tiny_job)
  config.search.num_epochs = 0.5
  sharded = _on(config, 8)
  sharded.mesh.model, sharded.mesh.fsdp, sharded.mesh.fsdp_min_size = 2, True, 4096
  setup = setup_of(sharded)
  state = setup_lib.initial_search_state(setup)
  specs = [leaf.sharding.spec for leaf in jax.tree.leaves(state.scores)]
  assert any(parallel.MODEL in spec for spec in specs), "no score leaf is sharded"
  assert any(spec == jax.sharding.PartitionSpec() for spec in specs), "small leaves should replicate"
  job.search_and_evaluate(_on(config, 1), tmp_path / "one")
  job.search_and_evaluate(sharded, tmp_path / "fsdp")
  one = final_search_state(_on(config, 1), tmp_path / "one")
  fsdp = final_search_state(sharded, tmp_path / "fsdp")
  assert int(one.step) == int(fsdp.step) == 2
  _assert_close(one, fsdp)


def test_the_donated_search_state_shares_no_buffer_with_the_teacher_or_the_setup(tiny_job):
  """Replicating a single-device array over the mesh may reuse its buffer for the first
  shard whatever `may_alias` says; the step donates the search state, so its statistics
  must live in buffers of their own, apart from the teacher's and the setup's."""
  config = tiny_config(tiny_job)
  config.search.distill_weight = 0.5
  setup = setup_of(_on(config, 8))

  def buffers(tree):
    return {shard.data.unsafe_buffer_pointer() for leaf in jax.tree.leaves(tree)
            for shard in leaf.addressable_shards}

  state = setup_lib.initial_search_state(setup)
  teacher = setup_lib.teacher(setup)
  donated = buffers(state)
  assert not donated & buffers(teacher)
  assert not donated & buffers(setup.batch_stats)
  assert not donated & buffers(setup.params)
