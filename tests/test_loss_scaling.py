"""The loss-scale hand-over's installer: each L4 optimizer installs its front
end's wrapper, once, and the wrapped method hands the inner L4 optimizer the
unscaled loss (the mixed-precision runs are tested with each front end)."""

import pytest
import tensorflow as tf

import L4
import L4.compat
from L4 import loss_scaling
from L4.compat import tensorflow_keras_is_keras_2

KERAS_WRAPPER = (
    loss_scaling.KERAS2 if tensorflow_keras_is_keras_2() else loss_scaling.KERAS
)
FRONT_ENDS = [(L4.L4Adam, loss_scaling.V1), (L4.compat.L4Adam, KERAS_WRAPPER)]


def method(wrapper):
    return getattr(wrapper.find_class(), wrapper.method)


@pytest.mark.parametrize("make_optimizer,wrapper", FRONT_ENDS, ids=["v1", "keras"])
def test_an_l4_optimizer_installs_its_wrapper_once(make_optimizer, wrapper):
    make_optimizer()
    installed = method(wrapper)
    assert getattr(installed, loss_scaling._MARK)
    make_optimizer()
    loss_scaling.install(wrapper)
    assert method(wrapper) is installed


def test_the_wrapped_method_hands_over_the_unscaled_loss():
    received = []

    class Inner(tf.compat.v1.train.GradientDescentOptimizer):
        def _receive_unscaled_loss(self, loss):
            received.append(loss)

    loss_scaling.install(loss_scaling.V1)
    opt = tf.compat.v1.mixed_precision.MixedPrecisionLossScaleOptimizer(
        Inner(0.1), loss_scale=8.0
    )
    with tf.Graph().as_default():
        w = tf.compat.v1.Variable(1.0, use_resource=True)
        loss = 3.0 * w
        opt.compute_gradients(loss, [w])
        assert received == [loss]
        opt.compute_gradients(lambda: 2.0 * w, [w])
        assert len(received) == 2 and received[1] is not loss
