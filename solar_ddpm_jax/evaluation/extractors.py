"""Feature extractors behind one interface, and the registry of the ones a config can name.

    config.evaluation.extractors -> extractor_names -> build_extractor(name, config, workdir)

Each network module (inception, clip, domain) registers the builder of its extractor here with
`@register(name)`; this module imports none of them, so they can all depend on it.
`solar_ddpm_jax.evaluation.features` imports them all, so its `build_extractor` knows every name.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

EXTRACTORS = ("inception", "clip", "domain")  # The names config.evaluation.extractors may hold.
# Feature networks run their convolutions and matmuls in full float32: on GPUs XLA's default
# lets float32 products round to TF32 (10-bit mantissa), which moves features by ~1e-3 and FID
# with them, differently on each GPU generation. Recorded with every feature-space number.
PRECISION = "highest"


@dataclasses.dataclass
class Extractor:
  """A feature network and the settings recorded next to every number computed with it."""
  name: str
  fn: Callable  # (params, images [B, H, W, C] in [-1, 1]) -> features [B, D]; jit-friendly.
  params: Any
  weights_path: str
  weights_sha256: str
  preprocessing: str

  def settings(self) -> dict:
    """What a feature-space number depends on."""
    return dict(extractor=self.name, weights=os.path.basename(self.weights_path),
                weights_sha256=self.weights_sha256, preprocessing=self.preprocessing,
                matmul_precision=PRECISION)


Builder = Callable[[Any, str], Extractor]  # (config, workdir) -> the extractor with its weights.
_BUILDERS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
  """Decorator: `builder(config, workdir)` makes the extractor called `name` in configs."""
  if name not in EXTRACTORS:
    raise ValueError(f"Extractor name {name!r} is not one of EXTRACTORS {EXTRACTORS}.")

  def decorate(builder: Builder) -> Builder:
    _BUILDERS[name] = builder
    return builder
  return decorate


def registered() -> tuple[str, ...]:
  """The names with a registered builder, in the order of EXTRACTORS."""
  return tuple(n for n in EXTRACTORS if n in _BUILDERS)


def extractor_names(value) -> list[str]:
  """config.evaluation.extractors as names: a tuple, or comma-separated text from the command line
  (--config.evaluation.extractors=inception,clip gives the one string "inception,clip")."""
  items = [value] if isinstance(value, str) else list(value)
  names = [n.strip() for item in items for n in str(item).split(",") if n.strip()]
  unknown = [n for n in names if n not in EXTRACTORS]
  if unknown:
    raise ValueError(f"Unknown feature extractors {unknown}; choose from {', '.join(EXTRACTORS)} "
                     "(config.evaluation.extractors).")
  return names


def build_extractor(name: str, config, workdir: str) -> Extractor:
  """The extractor `name` ("inception", "clip", "domain") with the weights the config names."""
  if name not in EXTRACTORS:
    raise ValueError(f"Unknown extractor {name!r}; choose from {EXTRACTORS}.")
  if name not in _BUILDERS:
    raise RuntimeError(f"The extractor {name!r} is not registered: import "
                       f"solar_ddpm_jax.evaluation.features (which loads every extractor).")
  return _BUILDERS[name](config, workdir)
