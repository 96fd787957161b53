"""A weight file on disk: where the published one is, whether it is there, and the error of one
that cannot be used (missing, of another format, corrupt or refused as unsafe), naming the file,
what was expected and where to get it.
"""

from __future__ import annotations

import hashlib
import os

from solar_ddpm_jax.errors import UserError

# Where the supported weight files are published (given as text: nothing here downloads them).
PUBLISHED = {
    "inception": dict(
        files="pt_inception-2015-12-05-6726825d.pth (pytorch-fid) or "
              "inception_v3_weights_fid.pickle (jax-fid)",
        urls=("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
              "pt_inception-2015-12-05-6726825d.pth",
              "https://www.dropbox.com/s/xt6zvlvt22dcwck/inception_v3_weights_fid.pickle?dl=1"),
        key="config.evaluation.inception_weights"),
    "clip": dict(
        files="model.safetensors of openai/clip-vit-base-patch32",
        urls=("https://huggingface.co/openai/clip-vit-base-patch32/resolve/main/"
              "model.safetensors",),
        key="config.evaluation.clip_weights"),
}


class WeightError(UserError, ValueError):
  """A weight file is missing, unreadable, refused as unsafe, or lacks a tensor of its shape."""


class FileError(WeightError):
  """The bytes of a weight file cannot be used: corrupt, of another format, or refused as unsafe.

  Raised by the loaders with the file named; `read_weights` adds which file was expected and
  where the published one is.
  """


def require_file(path: str, extractor: str) -> str:
  """Returns `path` if it is a file; otherwise raises naming the file, its source and config key."""
  if path and os.path.isfile(path):
    return path
  if not path:
    given = "no path was given"
  elif os.path.isdir(path):
    given = f"{path!r} is a directory, not a weight file"
  else:
    given = f"{path!r} does not exist"
  raise FileNotFoundError(f"{extractor} weights: {given}. {_where_to_get(extractor)}")


def _where_to_get(extractor: str) -> str:
  info = PUBLISHED[extractor]
  return (f"Download {info['files']} from {' or '.join(info['urls'])} and pass its path with "
          f"--config.{info['key'].removeprefix('config.')}=/path/to/file ({info['key']}).")


def read_weights(path: str, extractor: str, reader):
  """reader(path) of an existing weight file; a file of another format (a pytorch_model.bin for
  model.safetensors, a saved download page for the pickle), a corrupt one or one refused as unsafe
  raises WeightError naming the file, what was expected and where to get it."""
  require_file(path, extractor)
  try:
    return reader(path)
  except Exception as e:  # The loaders' FileError; safetensors and numpy errors alike.
    if isinstance(e, WeightError) and not isinstance(e, FileError):
      raise  # Missing or misshapen tensors: check_tensors' message names them.
    detail = str(e) if isinstance(e, FileError) else f"{type(e).__name__}: {e}"
    raise WeightError(
        f"{extractor} weights: {path!r} could not be read as {PUBLISHED[extractor]['files']} "
        f"({detail}). {_where_to_get(extractor)}") from e


def sha256_file(path: str) -> str:
  """Hex sha256 of a file (recorded next to every number computed with its weights)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def starts_like_zip(path: str) -> bool:
  with open(path, "rb") as f:
    return f.read(2) == b"PK"


def corrupt_zip(path: str, e: Exception) -> FileError:
  return FileError(f"{path!r} is a truncated or corrupt zip archive ({type(e).__name__}: {e}); "
                   "download it again")
