"""L4 optimizers for TF2 eager code and Keras, installed as ``L4.compat``.

``L4Adam``, ``L4Mom`` and ``L4General`` take the same arguments as ``L4.L4*``
and compute with the same rule (`L4.rule`); they are optimizers of the Keras
that TensorFlow uses: Keras 3 (`L4.compat.optimizers`) or Keras 2
(`L4.compat.keras2`). ``LogL4`` adds L4's effective learning rate and L_min to
``fit``'s logs.
"""

import os

import tensorflow as tf


def tensorflow_keras_is_keras_2():
    """TensorFlow's own rule: Keras 2 up to TF 2.15, and on 2.16 and later
    when ``TF_USE_LEGACY_KERAS`` is set (then ``tf.keras`` is ``tf_keras``)."""
    major, minor = (int(part) for part in tf.__version__.split(".")[:2])
    legacy = os.environ.get("TF_USE_LEGACY_KERAS") in ("true", "True", "1")
    return (major, minor) < (2, 16) or legacy


if tensorflow_keras_is_keras_2():
    from L4.compat.keras2 import L4Adam, L4General, L4Mom, LogL4
else:
    from L4.compat.optimizers import L4Adam, L4General, L4Mom, LogL4

__all__ = ["L4Adam", "L4General", "L4Mom", "LogL4"]
