"""jackpot_jax: Lottery Jackpots in JAX/Flax.

  imported = jackpot_jax.import_torch("model.pth", "resnet50", num_classes=1000)
  jackpot_jax.export_torch(imported, variables, masks, "jackpot.pth")

The PyTorch entry points load lazily, so importing the package does not import torch.
"""

_LAZY = {"import_torch": "jackpot_jax.pytorch", "export_torch": "jackpot_jax.pytorch",
         "apply_masks_file": "jackpot_jax.pytorch",
         "search_and_evaluate": "jackpot_jax.run.job", "evaluate_workdir": "jackpot_jax.run.job"}

__all__ = sorted(_LAZY)


def __getattr__(name):
  if name in _LAZY:
    import importlib
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'jackpot_jax' has no attribute {name!r}")
