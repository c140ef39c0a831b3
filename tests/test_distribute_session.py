"""The v1 optimizers in a tf.compat.v1 Session under MirroredStrategy (every
behaviour): two replicas follow one device on the whole batch."""

import numpy as np
import pytest
import tensorflow as tf

from data_parallel import DEVICES, SAME_TRAJECTORY, STEPS, train_in_session


@pytest.mark.parametrize("name", ["L4Adam", "L4Mom"])
def test_session_under_mirrored_strategy_follows_one_device(name):
    # Under the v1 behaviour the variables are ref ones.
    with tf.Graph().as_default():
        one, _ = train_in_session(name, tf.distribute.get_strategy(), STEPS)
    with tf.Graph().as_default():
        two, copies = train_in_session(
            name, tf.distribute.MirroredStrategy(DEVICES), STEPS
        )
    for a, b in zip(two.params, one.params):
        np.testing.assert_allclose(a, b, **SAME_TRAJECTORY)
    np.testing.assert_allclose(two.eta, one.eta, **SAME_TRAJECTORY)
    for first, *others in copies:
        assert len(others) == 1
        np.testing.assert_array_equal(others[0], first)
