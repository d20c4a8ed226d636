"""PyTorch checkpoints in and out: import pre-trained weights, export searched jackpots.

  imported = import_torch("resnet50.pth", "resnet50", num_classes=1000)
  logits = imported.model.apply(imported.variables, images_nhwc, train=False)
  export_torch(imported, variables, masks, "jackpot.pth")               # W * M
  export_torch(imported, variables, masks, "jackpot.npz", format="masks")
  masks = apply_masks_file("jackpot.npz", imported)

Importing reads checkpoints without torch (`reading`); `export_torch` loads on first use,
and with it torch, which writes PyTorch's format.
"""

from jackpot_jax.errors import (CheckpointError, CheckpointMismatchError,
                                CheckpointNotFoundError, CheckpointReadError,
                                MasksFileError)
from jackpot_jax.pytorch.importing import ImportedModel, import_torch, weights_sha256
from jackpot_jax.pytorch.layout import CheckpointLayout, TensorSource
from jackpot_jax.pytorch.masks_file import apply_masks_file
from jackpot_jax.pytorch.reading import RawCheckpoint, read_checkpoint

__all__ = ["CheckpointError", "CheckpointLayout", "CheckpointMismatchError",
           "CheckpointNotFoundError", "CheckpointReadError", "ImportedModel", "MasksFileError",
           "RawCheckpoint", "TensorSource", "apply_masks_file", "export_torch", "import_torch",
           "read_checkpoint", "weights_sha256"]


def __getattr__(name: str):
  if name == "export_torch":
    from jackpot_jax.pytorch.exporting import export_torch  # pylint: disable=import-outside-toplevel
    return export_torch
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
