"""TensorFlow set-up shared by the command line and the input pipeline.

TensorFlow (tf.data, TFDS, clu's writers) only reads and writes files here: it must never take the
GPU or TPU, whose memory belongs to JAX.
"""

import os


def hide_accelerators_from_tensorflow() -> None:
  """Makes TensorFlow see no GPU or TPU (a no-op without TensorFlow or once it has started)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except (ImportError, RuntimeError, ValueError):
    pass
