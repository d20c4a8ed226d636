"""The jackpot is the best held-out evaluation, the start included (search.selected_on).

A random tiny network's held-out accuracy is chance, so these tests give the held-out
evaluations of masks a known answer: a real function of the mask, or a script keyed on
the mask's content (the same mask always scores the same, across a resume too). Dense
and test-split evaluations stay real.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch

from jackpot_jax.run import checkpointing, evaluation, loop, setup as setup_lib, job, workdir_export

from conftest import setup_of, tiny_config


def _holdout_scored_by(monkeypatch: pytest.MonkeyPatch, score: Callable[[dict], float]) -> None:
  """Held-out evaluations of masks return score(masks on the host)."""
  real = evaluation.Evaluator.accuracy

  def accuracy(self, params, batch_stats, masks):
    if self.split != evaluation.HOLDOUT or masks is None:
      return real(self, params, batch_stats, masks)
    return score(jax.device_get(masks))

  monkeypatch.setattr(evaluation.Evaluator, "accuracy", accuracy)


def _kept(masks) -> list[np.ndarray]:
  return [np.asarray(leaf) != 0 for leaf in jax.tree.leaves(masks)]


def _assert_trees_equal(a, b) -> None:
  leaves_a, leaves_b = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _config(job: Path):
  config = tiny_config(job)
  config.eval.every_epochs = 0.5  # the start, then steps 2, 4 and 6 of 6
  return config


def test_a_search_that_only_makes_its_mask_worse_returns_its_start(tiny_job, tmp_path,
                                                                    monkeypatch):
  """Held-out "accuracy" is the share of the magnitude mask's weights a mask keeps, so only
  the start scores 1; a learning rate of 100 flips masks at every step."""
  config = _config(tiny_job)
  config.search.learning_rate = 100.0
  setup = setup_of(config)
  magnitude = _kept(setup_lib.magnitude_masks(setup))

  def overlap(masks) -> float:
    kept = _kept(masks)
    return float(sum((a & b).sum() for a, b in zip(kept, magnitude))
                 / sum(b.sum() for b in magnitude))

  _holdout_scored_by(monkeypatch, overlap)
  report = job.search_and_evaluate(config, tmp_path)
  search = report["search"]
  assert [h["step"] for h in search["history"]] == [0, 2, 4, 6]
  assert all(h["jackpot_accuracy"] < 1.0 for h in search["history"][1:]), "no mask got worse"
  assert search["selected_on"] == "holdout" and search["selected_step"] == 0
  assert search["start_holdout_accuracy"] == report["holdout"]["jackpot"] == 1.0
  assert search["beat_start"] is False and search["steps"] == 6
  # The start's BN statistics are the pre-trained ones: the stale magnitude baseline.
  assert report["accuracy"]["jackpot"] == report["accuracy"]["magnitude"]
  assert "the start (step 0)" in (tmp_path / "report.md").read_text()
  assert "did not beat its start" in (tmp_path / "report.md").read_text()
  _, loaded, _ = job.load_workdir(tmp_path)
  _assert_trees_equal(loaded.masks, setup_lib.magnitude_masks(setup))
  _assert_trees_equal(loaded.batch_stats, setup.batch_stats)


def test_evaluations_before_first_selectable_are_neither_selected_nor_a_reached_goal():
  """A ramp's masks before its end keep more than the plan (search_stage sets
  first_selectable to the ramp's length): however well they score, they are not the
  jackpot and do not end the search."""
  ramped = loop.Evaluation(every_steps=2, measure=lambda state: (0.0, {}), goal=0.5,
                           keep=lambda state: state, first_selectable=3)
  assert not ramped.selects(2, 0.9, None) and not ramped.reaches_goal(2, 0.9)
  assert ramped.selects(4, 0.1, None) and not ramped.selects(4, 0.1, 0.2)
  assert ramped.selects(6, 0.2, 0.2) and ramped.reaches_goal(4, 0.5)
  plain = dataclasses.replace(ramped, first_selectable=0)
  assert plain.selects(0, 0.9, None) and plain.reaches_goal(2, 0.9)
  assert not dataclasses.replace(ramped, keep=None).selects(4, 0.9, None)


class _Scripted:
  """Held-out scores in the order masks are first seen; a mask seen again scores the same."""

  def __init__(self, values: list[float]):
    self.values, self.seen = values, {}

  def __call__(self, masks) -> float:
    digest = hashlib.sha256(b"".join(np.asarray(leaf).tobytes()
                                     for leaf in jax.tree.leaves(masks))).hexdigest()
    if digest not in self.seen:
      self.seen[digest] = self.values[len(self.seen)]
    return self.seen[digest]


# Steps 0, 2, 4, 6: the best is steps 2 and 4; ties go to the later one.
SCRIPT = [0.3, 0.6, 0.6, 0.4]


@pytest.fixture(scope="module")
def scripted_runs(tiny_job, tmp_path_factory) -> dict:
  """The same scripted search run straight, and stopped after step 3 then resumed."""
  root = tmp_path_factory.mktemp("selection")
  config = _config(tiny_job)
  config.search.learning_rate = 10.0  # masks flip between evaluations
  script = _Scripted(SCRIPT)
  with pytest.MonkeyPatch.context() as monkeypatch:
    _holdout_scored_by(monkeypatch, script)
    straight = job.search_and_evaluate(config, root / "straight")
    assert len(script.seen) == 4, "two evaluations saw the same mask"
    assert job.search_and_evaluate(config, root / "resumed", stop_after=3) == {"stopped_at": 3}
    resumed = job.search_and_evaluate(config, root / "resumed")
  return {"config": config, "root": root, "straight": straight, "resumed": resumed}


def _checkpointed_masks(config, workdir: Path, step: int):
  """The masks of the raw search state checkpointed at `step`."""
  abstract = jax.eval_shape(lambda: setup_lib.initial_search_state(setup_of(config)))
  with checkpointing.SearchCheckpoints(workdir / job.SEARCH_CHECKPOINTS, 3) as ckpts:
    restored = ckpts.manager.restore(step, args=ocp.args.Composite(
        **{checkpointing.STATE: ocp.args.StandardRestore(abstract)}))
  return restored[checkpointing.STATE].masks


def test_the_jackpot_is_the_best_evaluation_and_evaluate_and_export_use_it(scripted_runs,
                                                                           tmp_path):
  config, workdir = scripted_runs["config"], scripted_runs["root"] / "straight"
  report = scripted_runs["straight"]
  search = report["search"]
  assert [h["jackpot_accuracy"] for h in search["history"]] == SCRIPT
  assert search["selected_step"] == 4 and report["holdout"]["jackpot"] == 0.6
  assert search["start_holdout_accuracy"] == 0.3 and search["beat_start"] is True
  assert search["steps"] == 6
  _, loaded, meta = job.load_workdir(workdir)
  assert int(loaded.step) == 6 and meta["selected"] == {"step": 4, "accuracy": 0.6}
  _assert_trees_equal(loaded.masks, _checkpointed_masks(config, workdir, 4))
  with pytest.raises(AssertionError):  # the last step's masks are another mask
    _assert_trees_equal(loaded.masks, _checkpointed_masks(config, workdir, 6))
  setup = setup_of(config)
  assert report["accuracy"]["jackpot"] == evaluation.Evaluator(setup).accuracy(
      setup.params, loaded.batch_stats, loaded.masks)
  assert job.evaluate_workdir(workdir)["accuracy"]["jackpot"] == report["accuracy"]["jackpot"]
  exported = torch.load(workdir_export.export_workdir(workdir, tmp_path / "jackpot.pth"),
                        weights_only=True)
  mask = np.asarray(jax.device_get(loaded.masks)["layer1_0"]["conv1"]["kernel"])
  np.testing.assert_array_equal(exported["layer1.0.conv1.weight"].numpy() != 0,
                                mask.transpose(3, 2, 0, 1) != 0)


def test_a_resumed_search_ends_with_the_same_selection(scripted_runs):
  straight, resumed = scripted_runs["straight"]["search"], scripted_runs["resumed"]["search"]
  for key in ("selected_on", "selected_step", "start_holdout_accuracy", "beat_start",
              "history"):
    assert resumed[key] == straight[key], key
  root = scripted_runs["root"]
  _, a, _ = job.load_workdir(root / "straight")
  _, b, _ = job.load_workdir(root / "resumed")
  _assert_trees_equal((a.masks, a.batch_stats), (b.masks, b.batch_stats))
  assert scripted_runs["resumed"]["accuracy"] == scripted_runs["straight"]["accuracy"]


def test_a_checkpoint_that_lost_its_selected_jackpot_is_skipped_not_read_as_the_last_state(
    scripted_runs, tmp_path, caplog):
  workdir = tmp_path / "run"
  shutil.copytree(scripted_runs["root"] / "straight", workdir)
  shutil.rmtree(workdir / job.SEARCH_CHECKPOINTS / "6" / checkpointing.SELECTED)
  with caplog.at_level(logging.WARNING):
    _, loaded, meta = job.load_workdir(workdir)
  assert "skipping unreadable checkpoint at step 6" in caplog.text
  assert "selected/ is missing" in caplog.text
  assert int(loaded.step) == 4 and meta["selected"]["step"] == 4
