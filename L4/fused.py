"""``var -= alpha * delta`` in one kernel, for every kind of variable L4 meets.

The plain ``var.assign_sub(alpha * delta)`` makes a temporary and passes over
the variable twice; TensorFlow's gradient-descent kernel does it in one pass.
"""

import tensorflow as tf


def apply_descent(var, alpha, delta, use_locking=False):
    """``var -= alpha * delta``; ``var`` is a ref, resource or Keras variable."""
    if not isinstance(var, tf.Variable):
        var = var.value  # a Keras variable wraps a tf.Variable
    dtype = var.dtype.base_dtype
    if dtype in (tf.float16, tf.bfloat16):
        # alpha alone may not fit a half type when alpha * delta does.
        alpha, delta = (
            tf.ones([], dtype),
            tf.cast(tf.cast(alpha, delta.dtype) * delta, dtype),
        )
    else:
        alpha, delta = tf.cast(alpha, dtype), tf.cast(delta, dtype)
    if hasattr(var, "handle"):
        return tf.raw_ops.ResourceApplyGradientDescent(
            var=var.handle, alpha=alpha, delta=delta, use_locking=use_locking
        )
    return tf.raw_ops.ApplyGradientDescent(
        var=var, alpha=alpha, delta=delta, use_locking=use_locking
    ).op
