"""One search step written in PyTorch from docs/algorithm.md gives the JAX step's scores."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import traverse_util
from torch.func import functional_call

from jackpot_jax import models
from jackpot_jax.search import optim, scores as scores_lib, sparsity, steps
from jackpot_jax.pytorch import import_torch
from torch_reference.torch_models import CifarResNet, randomize_batch_norm
from torch_reference.torch_search import StraightThrough

from conftest import sgd_config

LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4


def _torch_topk_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
  flat = scores.flatten()
  mask = torch.zeros_like(flat)
  mask[torch.topk(flat, keep, sorted=False).indices] = 1.0
  return mask.view_as(scores)


def _torch_search(net, scores: dict, keeps: dict, images, labels, num_steps: int) -> dict:
  """The reference algorithm: W * M forward, straight-through backward, SGD on scores."""
  scores = {k: torch.nn.Parameter(v.clone()) for k, v in scores.items()}
  optimizer = torch.optim.SGD(scores.values(), lr=LR, momentum=MOMENTUM,
                              weight_decay=WEIGHT_DECAY)
  weights = dict(net.named_parameters())
  net.train()
  for _ in range(num_steps):
    masks = {k: _torch_topk_mask(s.detach(), keeps[k]) for k, s in scores.items()}
    overrides = {k: weights[k].detach() * StraightThrough.apply(s, masks[k])
                 for k, s in scores.items()}
    logits = functional_call(net, overrides, (images,), strict=False)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
  return {k: v.detach().numpy() for k, v in scores.items()}


def test_torch_and_jax_search_steps_give_the_same_scores():
  torch.manual_seed(0)
  torch.set_flush_denormal(True)
  net = CifarResNet(20, num_classes=10)
  randomize_batch_norm(net, seed=0)
  imported = import_torch(net.state_dict(), "resnet20", 10)
  params, batch_stats = imported.variables["params"], imported.variables["batch_stats"]
  plan = sparsity.build_sparsity_plan(params, sparsity=0.7, method="uniform",
                                      spec=models.get_model_spec("resnet20"))
  keep_counts = plan.keep_counts()
  tx = optim.make_optimizer(sgd_config(lr_schedule="constant", learning_rate=LR), 10)
  # Random (untied) scores, so both frameworks' top-k agree without a tie-break convention.
  initial = scores_lib.init_scores(params, plan, "kaiming", jax.random.PRNGKey(0))
  state = steps.init_search_state(initial, keep_counts, batch_stats, tx)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(8, 3, 8, 8)).astype(np.float32)
  labels = rng.integers(0, 10, 8)
  batch = {"image": jnp.asarray(images.transpose(0, 2, 3, 1)), "label": jnp.asarray(labels)}
  step = jax.jit(functools.partial(steps.search_step, model=imported.model,
                                   keep_counts=keep_counts, tx=tx, bn_mode="recalibrate"))
  for _ in range(2):
    state, _ = step(params, state, batch)

  torch_name = {l.path: l.name + ".weight" for l in plan.masked_layers}
  flat_initial = traverse_util.flatten_dict(initial)
  # HWIO scores to OIHW (convs) and (in, out) to (out, in) (the dense classifier).
  to_torch = lambda a: np.transpose(a, (3, 2, 0, 1)) if a.ndim == 4 else a.T
  torch_scores = {torch_name[k[:-1]]: torch.from_numpy(np.array(to_torch(np.asarray(v))))
                  for k, v in flat_initial.items()}
  keeps = {torch_name[l.path]: plan.keep_count(l) for l in plan.masked_layers}
  updated = _torch_search(net, torch_scores, keeps, torch.from_numpy(images),
                          torch.from_numpy(labels), num_steps=2)
  flat_jax = traverse_util.flatten_dict(jax.device_get(state.scores))
  for key, value in flat_jax.items():
    np.testing.assert_allclose(to_torch(np.asarray(value)), updated[torch_name[key[:-1]]],
                               rtol=0, atol=1e-5, err_msg=torch_name[key[:-1]])

