"""TensorFlow's fused update kernels, for every kind of variable L4 meets.

Each kernel reads and writes every array once: ``var -= alpha * delta`` (the
plain ``var.assign_sub(alpha * delta)`` makes a temporary and passes over the
variable twice), and Adam's update of the EMAs and the variable in one pass.
`apply_update` applies one variable's part of a taken `L4.rule.Step`.
"""

import contextlib

import tensorflow as tf

from L4 import rule as l4_rule


def tf_variable(var):
    """The tf.Variable of a ref, resource or Keras variable."""
    # A Keras variable wraps a tf.Variable.
    return var if isinstance(var, tf.Variable) else var.value


def apply_descent(var, alpha, delta, use_locking=False):
    """``var -= alpha * delta``; ``var`` is a ref, resource or Keras variable."""
    var = tf_variable(var)
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


def apply_adam(var, m, v, grad, kernel: l4_rule.AdamKernel, use_locking=False):
    """TensorFlow's Adam kernel on ``var`` and its EMAs ``m``, ``v`` (all of
    one dtype, that of ``grad`` and of ``kernel``'s scalars)."""
    var, m, v = (tf_variable(x) for x in (var, m, v))
    scalars = kernel._asdict()
    if hasattr(var, "handle"):
        return tf.raw_ops.ResourceApplyAdam(
            var=var.handle,
            m=m.handle,
            v=v.handle,
            grad=grad,
            use_locking=use_locking,
            **scalars,
        )
    return tf.raw_ops.ApplyAdam(
        var=var, m=m, v=v, grad=grad, use_locking=use_locking, **scalars
    ).op


def apply_update(step, i, var, slots, grad, assign, use_locking=False):
    """Applies variable ``i``'s part of the taken `L4.rule.Step` ``step``.

    ``slots`` are the variable's EMA variables in ``rule.layout`` order,
    ``grad`` its dense gradient, and ``assign(slot, value)`` the front end's
    way to write an EMA. Returns the ops (`None` entries in eager mode).
    """
    if step.kinds[i] == l4_rule.ADAM:
        m, v = slots
        kernel = step.adam_kernel[grad.dtype]
        return [apply_adam(var, m, v, grad, kernel, use_locking)]
    descent = apply_descent(var, step.direction_scale, step.directions[i], use_locking)
    after = (
        tf.control_dependencies([descent])
        if descent is not None
        else contextlib.nullcontext()
    )
    with after:
        # After the descent, which may read the same tensor (momentum's
        # direction is its EMA): the assignment can then take over its buffer.
        assigns = [assign(slot, ema) for slot, ema in zip(slots, step.moments[i])]
    return [descent, *assigns]
