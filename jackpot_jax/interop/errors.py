"""Errors of checkpoint import and export. Every message is a single line, fit for a CLI."""

from __future__ import annotations


class CheckpointError(ValueError):
  """Base class: a checkpoint (or masks file) cannot be used as asked."""


class CheckpointReadError(CheckpointError):
  """The file is truncated, damaged, or not a PyTorch / safetensors checkpoint at all."""


class CheckpointNotFoundError(CheckpointReadError, FileNotFoundError):
  """The path does not name a file; also a FileNotFoundError for callers that catch those."""


class CheckpointMismatchError(CheckpointError):
  """Checkpoint tensors and model variables do not correspond one to one with equal shapes."""


class MasksFileError(CheckpointError):
  """A masks file was made for other weights, or its layers do not fit the model."""


def one_line(error: BaseException) -> str:
  """`Type: first line of the message`, to quote a library's error inside ours."""
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
