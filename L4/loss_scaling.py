"""Hands the unscaled loss from loss-scale wrappers to an L4 optimizer inside.

Mixed-precision training multiplies the loss by a loss scale S before the
gradients are taken, and divides the gradients by S before the wrapped
optimizer sees them. L4's stepsize needs the true loss L, but the wrappers
hand their optimizer only S * L (``tf.compat.v1``'s
``MixedPrecisionLossScaleOptimizer``, Keras 2's ``LossScaleOptimizer``) or
nothing at all (Keras 3's ``LossScaleOptimizer``); an L4 stepsize from S * L
would be S times too large.

`install` wraps one wrapper's loss-scaling method so that, when the optimizer
inside has a ``_receive_unscaled_loss`` method (the L4 optimizers do), it is
called with L first; other optimizers are unaffected. Each L4 optimizer
installs its front end's wrapper when it is constructed: an optimizer exists
before anything can wrap it, so nothing is patched for code that never uses
L4, and installing again changes nothing.
"""

from typing import NamedTuple

_MARK = "_l4_hands_over_unscaled_loss"


class Wrapper(NamedTuple):
    """A loss-scale wrapper: where its class is, the method that scales the
    loss (called with the loss, or a callable returning it), and the
    attribute that holds the optimizer inside."""

    find_class: object  # () -> the class, imported when installed
    method: str
    inner: str


def _v1_wrapper():
    import tensorflow as tf

    return tf.compat.v1.mixed_precision.MixedPrecisionLossScaleOptimizer


def _keras_wrapper():
    import keras

    return keras.optimizers.LossScaleOptimizer


def _keras2_wrapper():
    # Keras 2's (``tf.keras`` on TF <= 2.15, ``tf_keras``): `compute_gradients`
    # calls it before the inner optimizer's `compute_gradients` sees the
    # scaled loss.
    import sys

    import tensorflow as tf

    return sys.modules[
        tf.keras.mixed_precision.LossScaleOptimizer.__module__
    ].LossScaleOptimizerV3


V1 = Wrapper(_v1_wrapper, "_scale_loss", "_optimizer")
KERAS = Wrapper(_keras_wrapper, "scale_loss", "inner_optimizer")
KERAS2 = Wrapper(_keras2_wrapper, "get_scaled_loss", "inner_optimizer")


def install(wrapper: Wrapper):
    """Wraps ``wrapper``'s loss-scaling method (once: a second call changes nothing)."""
    cls = wrapper.find_class()
    original = getattr(cls, wrapper.method)
    if getattr(original, _MARK, False):
        return

    def scale(self, loss):
        inner = getattr(self, wrapper.inner)
        if not callable(loss):
            _hand_over(inner, loss)
            return original(self, loss)

        def unscaled_loss():
            value = loss()
            _hand_over(inner, value)
            return value

        return original(self, unscaled_loss)

    scale.__name__ = scale.__qualname__ = wrapper.method
    scale.__doc__ = original.__doc__
    setattr(scale, _MARK, True)
    setattr(cls, wrapper.method, scale)


def _hand_over(inner, loss):
    receive = getattr(inner, "_receive_unscaled_loss", None)
    if receive is not None:
        receive(loss)
