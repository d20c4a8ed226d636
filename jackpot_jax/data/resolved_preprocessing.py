"""The resolved preprocessing of a dataset: what its images go through and where each
choice came from. `preprocessing` resolves it; the data config, the transforms and the
reports read it."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """The resolved preprocessing of a dataset.

  `channels_from`, `statistics` and `augment_from` say where the channel count, the
  mean/std and the augmentation came from: 'config', 'standard:<name>', or the data
  ('image modes', 'estimated from N training images', 'image size 40 px <= 64', ...).
  `image_size` is the square side the model sees (None: the images' own size).
  """
  channels: int
  channels_from: str
  mean: tuple[float, ...]
  std: tuple[float, ...]
  statistics: str
  augment: str
  augment_from: str
  image_size: int | None
  crop_padding: int

  def as_dict(self) -> dict[str, Any]:
    """The JSON form report.json records."""
    values = dataclasses.asdict(self)
    values.update(mean=list(self.mean), std=list(self.std))
    return values


def summary(preprocessing: Mapping[str, Any]) -> str:
  """One line for people, from `Preprocessing.as_dict()`: each value with its origin."""

  def numbers(values) -> str:
    return ", ".join(f"{value:.4f}" for value in values)

  size = preprocessing["image_size"]
  return (f"channels {preprocessing['channels']} ({preprocessing['channels_from']}); "
          f"mean ({numbers(preprocessing['mean'])}), std ({numbers(preprocessing['std'])}) "
          f"({preprocessing['statistics']}); augment {preprocessing['augment']} "
          f"({preprocessing['augment_from']})"
          + ("" if size is None else f" at {size}x{size}"))
