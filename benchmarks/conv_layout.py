"""Does the convolution data layout close the CPU gap between XLA and PyTorch's oneDNN?

Times a ResNet-20 (CIFAR, option-A shortcuts) step -- conv, batch norm (batch statistics,
no affine), ReLU, average pool, dense, cross-entropy; gradient of the conv kernels -- as JAX
NHWC/HWIO, JAX NCHW/OIHW, PyTorch NCHW and PyTorch channels_last, from the same weights and
batch, checked to agree first. Each variant runs in its own block (warmup, then the median
of --steps steps) so one framework's spinning worker threads do not slow the other.

  python benchmarks/conv_layout.py --batch_size=128 --image_size=28 --channels=1
"""

from __future__ import annotations

import functools
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from jackpot_jax import entrypoint, fileio

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 128, "batch size")
flags.DEFINE_integer("steps", 20, "timed steps per variant; the median is reported")
flags.DEFINE_integer("warmup", 3, "untimed steps per variant after compilation")
flags.DEFINE_integer("image_size", 28, "input height and width")
flags.DEFINE_integer("channels", 1, "input channels")
flags.DEFINE_bool("torch", True, "also time PyTorch (skipped with a note if not installed)")
flags.DEFINE_string("output", None, "optional JSON output path")

WIDTHS = (16, 32, 64)
BLOCKS = [(WIDTHS[s - 1], w, 2) if s and not i else (w, w, 1)  # (in, out, stride) per block
          for s, w in enumerate(WIDTHS) for i in range(3)]
NUM_CLASSES = 10
EPS = 1e-5
JAX_DIMENSIONS = {"NHWC": ("NHWC", "HWIO", "NHWC"), "NCHW": ("NCHW", "OIHW", "NCHW")}


def _pad(extra: int) -> tuple[int, int]:
  return extra // 2, extra - extra // 2  # option-A zero channels before / after the shortcut


def make_problem() -> dict:
  """He-normal HWIO kernels, a dense classifier and a labelled batch (NHWC), seed 0."""
  rng = np.random.default_rng(0)
  shapes = [(FLAGS.channels, WIDTHS[0])] + [s for i, o, _ in BLOCKS for s in ((i, o), (o, o))]
  kernels = [(rng.normal(size=(3, 3, i, o)) * np.sqrt(2 / (9 * i))).astype(np.float32)
             for i, o in shapes]
  size = (FLAGS.batch_size, FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
  return {"kernels": kernels,
          "dense_w": (rng.normal(size=(WIDTHS[-1], NUM_CLASSES)) / 8).astype(np.float32),
          "dense_b": np.zeros(NUM_CLASSES, np.float32),
          "images": rng.normal(size=size).astype(np.float32),
          "labels": rng.integers(0, NUM_CLASSES, FLAGS.batch_size).astype(np.int32)}


def jax_loss(kernels, dense_w, dense_b, images, labels, layout: str):
  nchw = layout == "NCHW"
  channel_axis, spatial = (1, (2, 3)) if nchw else (3, (1, 2))

  def conv(x, kernel, stride=1):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((1, 1), (1, 1)),
                                        dimension_numbers=JAX_DIMENSIONS[layout])

  def bn(x):
    mean, var = x.mean((0, *spatial), keepdims=True), x.var((0, *spatial), keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + EPS)

  kernel = iter(kernels)
  x = jax.nn.relu(bn(conv(images, next(kernel))))
  for cin, cout, stride in BLOCKS:
    y = bn(conv(jax.nn.relu(bn(conv(x, next(kernel), stride))), next(kernel)))
    x = x[:, :, ::stride, ::stride] if nchw else x[:, ::stride, ::stride, :]
    pad = [(0, 0)] * 4
    pad[channel_axis] = _pad(cout - cin)
    x = jax.nn.relu(y + jnp.pad(x, pad))
  logits = x.mean(spatial) @ dense_w + dense_b
  return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).mean()


def jax_step(problem: dict, layout: str):
  """A step() returning (loss, kernel gradients), blocked until ready."""
  nchw = layout == "NCHW"
  kernels = [jnp.asarray(k.transpose(3, 2, 0, 1) if nchw else k) for k in problem["kernels"]]
  images = jnp.asarray(problem["images"].transpose(0, 3, 1, 2) if nchw else problem["images"])
  args = (kernels, jnp.asarray(problem["dense_w"]), jnp.asarray(problem["dense_b"]), images,
          jnp.asarray(problem["labels"]))
  grad_fn = jax.jit(jax.value_and_grad(functools.partial(jax_loss, layout=layout)))
  return lambda: jax.block_until_ready(grad_fn(*args))


def torch_step(torch, problem: dict, channels_last: bool):
  """Like jax_step, in torch.nn.functional (OIHW kernels, NCHW or channels_last)."""
  F = torch.nn.functional
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  x = torch.from_numpy(problem["images"].transpose(0, 3, 1, 2).copy()).to(memory_format=fmt)
  kernels = [torch.from_numpy(k.transpose(3, 2, 0, 1).copy()).to(memory_format=fmt)
             .requires_grad_() for k in problem["kernels"]]
  dense_w, dense_b = torch.from_numpy(problem["dense_w"]), torch.from_numpy(problem["dense_b"])
  labels = torch.from_numpy(problem["labels"].astype(np.int64))
  bn = functools.partial(F.batch_norm, running_mean=None, running_var=None, training=True,
                         eps=EPS)

  def step():
    kernel = iter(kernels)
    h = F.relu(bn(F.conv2d(x, next(kernel), padding=1)))
    for cin, cout, stride in BLOCKS:
      y = F.relu(bn(F.conv2d(h, next(kernel), stride=stride, padding=1)))
      y = bn(F.conv2d(y, next(kernel), padding=1))
      shortcut = h[:, :, ::2, ::2] if stride > 1 else h
      h = F.relu(y + F.pad(shortcut, (0, 0, 0, 0) + _pad(cout - cin)))
    loss = F.cross_entropy(h.mean((2, 3)) @ dense_w + dense_b, labels)
    return loss.detach(), torch.autograd.grad(loss, kernels)
  return step


def _loss_and_grads(name: str, step) -> tuple[float, np.ndarray]:
  """The loss and all kernel gradients, flattened in HWIO order."""
  loss, grads = step()
  hwio = [np.asarray(g) if name == "jax_nhwc" else np.asarray(g).transpose(2, 3, 1, 0)
          for g in grads]
  return float(loss), np.concatenate([g.ravel() for g in hwio])


def _check(name: str, step, want: tuple, rtol: float, grad_rtol: float = 5e-2) -> None:
  """Fails unless step's loss agrees with want's to rtol, and its gradients to grad_rtol:
  loose, as a pre-activation within rounding of zero can flip its ReLU between versions,
  moving the gradients of that layer and all before it by ~1/sqrt(elements) (2e-3 at batch 8).
  """
  got = _loss_and_grads(name, step)
  loss_err = abs(got[0] - want[0]) / abs(want[0])
  grad_err = float(np.linalg.norm(got[1] - want[1]) / np.linalg.norm(want[1]))
  if not (loss_err <= rtol and grad_err <= grad_rtol):
    raise AssertionError(f"{name} vs jax_nhwc: loss {got[0]:.7g} vs {want[0]:.7g} "
                         f"(rel {loss_err:.1e}, tol {rtol}); gradients rel {grad_err:.1e} "
                         f"(tol {grad_rtol})")


def _median_ms(step) -> float:
  for _ in range(FLAGS.warmup):
    step()
  times = []
  for _ in range(FLAGS.steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 1e3


def main(argv):
  del argv
  problem = make_problem()
  variants = {f"jax_{layout.lower()}": jax_step(problem, layout) for layout in JAX_DIMENSIONS}
  reference = _loss_and_grads("jax_nhwc", variants["jax_nhwc"])
  _check("jax_nchw", variants["jax_nchw"], reference, 1e-4)
  environment = {"machine": platform.machine(), "jax_backend": jax.default_backend(),
                 "cpu_count": os.cpu_count(), "jax_version": jax.__version__}
  torch = None
  if FLAGS.torch:
    try:
      import torch
    except ImportError:
      print("note: torch is not installed; skipping the PyTorch rows")
  if torch is not None:
    torch.set_flush_denormal(True)  # without it PyTorch slows ~10x on denormal activations
    torch.set_num_threads(os.cpu_count() or 1)  # XLA's CPU thread pool uses every core
    environment.update(torch_num_threads=torch.get_num_threads(), torch_version=torch.__version__)
    for name, channels_last in (("torch_nchw", False), ("torch_channels_last", True)):
      variants[name] = torch_step(torch, problem, channels_last)
      _check(name, variants[name], reference, 1e-3)
  step_ms = {name: _median_ms(step) for name, step in variants.items()}
  images_per_s = {name: FLAGS.batch_size / ms * 1e3 for name, ms in step_ms.items()}
  ratio = {name: ips / images_per_s["jax_nhwc"] for name, ips in images_per_s.items()}
  print(f"{'variant':<22}{'ms/step':>10}{'images/s':>11}{'x jax_nhwc':>12}")
  for name in variants:
    print(f"{name:<22}{step_ms[name]:>10.2f}{images_per_s[name]:>11.1f}{ratio[name]:>12.3f}")
  result = {"batch_size": FLAGS.batch_size, "input": [FLAGS.image_size] * 2 + [FLAGS.channels],
            "steps": FLAGS.steps, "warmup": FLAGS.warmup, "environment": environment,
            "step_ms": step_ms, "images_per_s": images_per_s, "images_per_s_over_jax_nhwc": ratio}
  if torch is not None:
    best = (max(v for n, v in images_per_s.items() if n.startswith("jax"))
            / max(v for n, v in images_per_s.items() if n.startswith("torch")))
    result["best_jax_over_best_torch_images_per_s"] = best
    print(f"best JAX / best PyTorch images/s: {best:.3f}")
  if FLAGS.output:
    fileio.write_json(FLAGS.output, result)


if __name__ == "__main__":
  entrypoint.run(main)
