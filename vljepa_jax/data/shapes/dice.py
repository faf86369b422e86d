"""`Dice`: the random numbers of one generated item, a pure function of (seed, index, stream).

Every public generator draws only from `np.random.default_rng([seed, index, stream])`, with its own
`STREAM_*` constant, so the same (seed, index) always gives the same output and the generators are
independent of one another.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

# Per-function constants mixed into the seed, so functions sharing (seed, index) are independent.
STREAM_VIDEO, STREAM_IMAGE, STREAM_HARD_NEGATIVE, STREAM_STATE_ACTION, STREAM_LONG = (
    101, 102, 103, 104, 105)
_BLOCK = 64  # draws per Generator call


class Dice:
  """Uniform draws for one (seed, index, stream), served from a block-refilled pool.

  A Generator call costs microseconds and a clip needs dozens of draws; drawing them 64 at a time
  keeps generation fast while staying a pure function of (seed, index, stream).
  """

  def __init__(self, seed: int, index: int, stream: int):
    self._rng = np.random.default_rng([seed, index, stream])
    self._pool: list[float] = []

  def unit(self) -> float:
    if not self._pool:
      self._pool = self._rng.random(_BLOCK).tolist()
    return self._pool.pop()

  def uniform(self, low: float, high: float) -> float:
    return low + (high - low) * self.unit()

  def below(self, n: int) -> int:
    return min(int(self.unit() * n), n - 1)

  def choice(self, items: Sequence[Any]) -> Any:
    return items[self.below(len(items))]

  def shuffled(self, items: Sequence[Any]) -> list[Any]:
    out = list(items)
    for i in range(len(out) - 1, 0, -1):  # Fisher-Yates
      j = self.below(i + 1)
      out[i], out[j] = out[j], out[i]
    return out
