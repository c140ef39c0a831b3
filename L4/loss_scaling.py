"""Hands the unscaled loss from loss-scale wrappers to an L4 optimizer inside.

Mixed-precision training multiplies the loss by a loss scale S before the
gradients are taken, and divides the gradients by S before the wrapped
optimizer sees them. L4's stepsize needs the true loss L, but the wrappers
hand their optimizer only S * L (``tf.compat.v1``'s
``MixedPrecisionLossScaleOptimizer``) or nothing at all (Keras'
``LossScaleOptimizer``); an L4 stepsize from S * L would be S times too large.

`install_v1`, `install_keras` and `install_keras2` wrap the wrappers'
loss-scaling methods so that, when the optimizer inside has a
``_receive_unscaled_loss`` method (the L4 optimizers do), it is called with L
first. Other optimizers are unaffected.
"""

_MARK = "_l4_hands_over_unscaled_loss"


def _hand_over(inner, loss):
    receive = getattr(inner, "_receive_unscaled_loss", None)
    if receive is not None:
        receive(loss)


def install_v1():
    """Wraps ``tf.compat.v1.mixed_precision.MixedPrecisionLossScaleOptimizer._scale_loss``."""
    import tensorflow as tf

    cls = tf.compat.v1.mixed_precision.MixedPrecisionLossScaleOptimizer
    original = cls._scale_loss
    if getattr(original, _MARK, False):
        return

    def _scale_loss(self, loss):
        if not callable(loss):
            _hand_over(self._optimizer, loss)
            return original(self, loss)

        def unscaled_loss():
            value = loss()
            _hand_over(self._optimizer, value)
            return value

        return original(self, unscaled_loss)

    setattr(_scale_loss, _MARK, True)
    cls._scale_loss = _scale_loss


def install_keras():
    """Wraps ``keras.optimizers.LossScaleOptimizer.scale_loss``."""
    import keras

    cls = keras.optimizers.LossScaleOptimizer
    original = cls.scale_loss
    if getattr(original, _MARK, False):
        return

    def scale_loss(self, loss):
        _hand_over(self.inner_optimizer, loss)
        return original(self, loss)

    setattr(scale_loss, _MARK, True)
    cls.scale_loss = scale_loss


def install_keras2():
    """Wraps Keras 2's ``LossScaleOptimizerV3.get_scaled_loss`` (``tf.keras`` on
    TF <= 2.15, ``tf_keras``), which ``compute_gradients`` calls before the
    inner optimizer's ``compute_gradients`` sees the scaled loss."""
    import sys

    import tensorflow as tf

    module = sys.modules[tf.keras.mixed_precision.LossScaleOptimizer.__module__]
    cls = module.LossScaleOptimizerV3
    original = cls.get_scaled_loss
    if getattr(original, _MARK, False):
        return

    def get_scaled_loss(self, loss):
        if not callable(loss):
            _hand_over(self.inner_optimizer, loss)
            return original(self, loss)

        def unscaled_loss():
            value = loss()
            _hand_over(self.inner_optimizer, value)
            return value

        return original(self, unscaled_loss)

    setattr(get_scaled_loss, _MARK, True)
    cls.get_scaled_loss = get_scaled_loss
