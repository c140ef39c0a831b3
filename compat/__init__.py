"""L4 optimizers for TF2 eager code and Keras 3, installed as ``L4.compat``.

``L4Adam``, ``L4Mom`` and ``L4General`` take the same arguments as ``L4.L4*``
and compute with the same rule (`L4.rule`); they are ``keras.optimizers.Optimizer``
subclasses. ``LogL4`` adds L4's effective learning rate and L_min to ``fit``'s logs.
"""

import os

import tensorflow as tf


def _tensorflow_keras_is_keras_2():
    """TensorFlow's own rule: Keras 2 up to TF 2.15, and on 2.16 and later
    when ``TF_USE_LEGACY_KERAS`` is set (then ``tf.keras`` is ``tf_keras``)."""
    major, minor = (int(part) for part in tf.__version__.split(".")[:2])
    legacy = os.environ.get("TF_USE_LEGACY_KERAS") in ("true", "True", "1")
    return (major, minor) < (2, 16) or legacy


if _tensorflow_keras_is_keras_2():
    raise ImportError(
        f"L4.compat serves Keras 3 (TensorFlow 2.16 or later, without "
        f"TF_USE_LEGACY_KERAS), and the Keras of this TensorFlow "
        f"{tf.__version__} is Keras 2, which L4.compat does not support yet. "
        "The tf.compat.v1 optimizers L4.L4Adam, L4.L4Mom and L4.L4General "
        "work with it, in Sessions, eagerly and in tf.function."
    )

from L4.compat.optimizers import L4Adam, L4General, L4Mom, LogL4  # noqa: E402

__all__ = ["L4Adam", "L4General", "L4Mom", "LogL4"]
