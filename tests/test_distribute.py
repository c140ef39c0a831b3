"""Data-parallel training under tf.distribute: one L4 step for all replicas.

Two replicas (the CPU split in two logical devices, see conftest.py), each on
half of every batch, must follow the trajectory of one device on the whole
batch, and every replica's copy of the variables and of L4's state must stay
identical. Multi-worker training runs in test_multi_worker.py.
"""

import numpy as np
import pytest
import tensorflow as tf

import L4
import L4.compat

from data_parallel import (
    DEVICES,
    OPTIMIZERS,
    PLAIN_OPTIMIZERS,
    SAME_TRAJECTORY,
    STEPS,
    assert_copies_identical,
    collective_ops,
    copies,
    mirrored,
    traced_step,
    train,
)
from harness import assert_records_close, keras, reference_run
from problems import LeastSquares

# Strategies are built and run from eager code (v2 behaviour only).
pytestmark = pytest.mark.eager


CASES = sorted(OPTIMIZERS)


def one_device():
    return tf.distribute.get_strategy()


@pytest.mark.parametrize("front,name", CASES)
def test_two_replicas_follow_one_device_on_the_whole_batch(front, name):
    one, _, _ = train(front, name, one_device(), STEPS)
    two, var_list, opt = train(front, name, mirrored(), STEPS)
    for step, (a, b) in enumerate(zip(two, one)):
        for pa, pb in zip(a.params, b.params):
            np.testing.assert_allclose(
                pa, pb, **SAME_TRAJECTORY, err_msg=f"step {step}"
            )
        np.testing.assert_allclose(
            a.eta, b.eta, **SAME_TRAJECTORY, err_msg=f"step {step}"
        )
    assert_copies_identical(front, var_list, opt)
    assert int(opt.step_count.numpy()) == STEPS


@pytest.mark.parametrize("front,name", [("v1", "L4Adam"), ("keras", "L4Mom")])
def test_two_replicas_follow_the_reference(front, name):
    kwargs = {} if name == "L4Adam" else dict(direction_estimator="momentum")
    records, _, _ = train(front, name, mirrored(), 20)
    assert_records_close(
        records, reference_run(LeastSquares(), 20, **kwargs), tf.float32
    )


@pytest.mark.parametrize("front,name", [("v1", "L4Mom"), ("keras", "L4Adam")])
def test_eager_strategy_run(front, name):
    one, _, _ = train(front, name, one_device(), 5, mode="eager")
    two, var_list, opt = train(front, name, mirrored(), 5, mode="eager")
    for a, b in zip(two, one):
        for pa, pb in zip(a.params, b.params):
            np.testing.assert_allclose(pa, pb, **SAME_TRAJECTORY)
    assert_copies_identical(front, var_list, opt)


@pytest.mark.parametrize("front,name", CASES)
def test_nan_on_one_replica_skips_the_step_on_all(front, name):
    records, var_list, opt = train(front, name, mirrored(), 6, poison_step=3)
    for a, b in zip(records[2].params, records[3].params):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(records[4].params[0], records[3].params[0])
    assert [int(s) for s in copies(opt.skipped_steps)] == [1, 1]
    assert [int(s) for s in copies(opt.step_count)] == [5, 5]
    assert_copies_identical(front, var_list, opt)


@pytest.mark.parametrize("front,name", CASES)
def test_checkpoint_under_a_strategy_continues_on_one_device(front, name, tmp_path):
    whole, _, _ = train(front, name, one_device(), 30)
    _, var_list, opt = train(front, name, mirrored(), 20)
    path = tf.train.Checkpoint(params=var_list, opt=opt).write(str(tmp_path / "ckpt"))
    continued, _, _ = train(front, name, one_device(), 10, restore=path)
    for a, b in zip(continued[-1].params, whole[-1].params):
        np.testing.assert_allclose(a, b, **SAME_TRAJECTORY)
    np.testing.assert_allclose(continued[-1].eta, whole[-1].eta, **SAME_TRAJECTORY)


def regression_data(steps=STEPS, batch=64):
    rng = np.random.RandomState(0)
    x = rng.normal(size=(steps * batch, 5)).astype(np.float32)
    y = (
        x @ rng.normal(size=(5, 1)) + 0.1 * rng.normal(size=(steps * batch, 1))
    ).astype(np.float32)
    return x, y


def fit(strategy, optimizer):
    x, y = regression_data()
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential(
            [
                keras.Input((5,)),
                keras.layers.Dense(8, activation="tanh"),
                keras.layers.Dense(1),
            ]
        )
        model.compile(optimizer=optimizer(), loss="mse")
    model.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    return model


@pytest.mark.parametrize("optimizer", [L4.compat.L4Adam, L4.compat.L4Mom])
def test_fit_under_mirrored_strategy_follows_one_device(optimizer):
    one = fit(one_device(), optimizer)
    two = fit(mirrored(), optimizer)
    assert int(two.optimizer.step_count.numpy()) == STEPS
    for a, b in zip(two.get_weights(), one.get_weights()):
        np.testing.assert_allclose(a, b, **SAME_TRAJECTORY)
    np.testing.assert_allclose(
        two.optimizer.effective_learning_rate.numpy(),
        one.optimizer.effective_learning_rate.numpy(),
        **SAME_TRAJECTORY,
    )
    assert_copies_identical("keras", two.trainable_variables, two.optimizer)


@pytest.mark.keras3
def test_gradient_accumulation_under_a_strategy_is_refused():
    strategy = mirrored()
    with strategy.scope():
        var_list = [tf.Variable([1.0, 2.0])]
        opt = L4.compat.L4Adam(gradient_accumulation_steps=2)
        opt.build(var_list)

    def share():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(var_list[0] ** 2)
        opt.apply_gradients(zip(tape.gradient(loss, var_list), var_list), loss=loss)

    with pytest.raises(NotImplementedError, match="gradient_accumulation_steps"):
        tf.function(lambda: strategy.run(share))()


@pytest.mark.parametrize("front", ["v1", "keras"])
def test_the_extra_cost_is_one_scalar_all_reduce(front):
    strategy = mirrored()

    x = tf.ones([2, 4])
    with_l4 = collective_ops(
        traced_step(strategy, front, OPTIMIZERS[front, "L4Adam"]), x
    )
    with_plain = collective_ops(
        traced_step(strategy, front, PLAIN_OPTIMIZERS[front]), x
    )
    # The gradients are all-reduced as TensorFlow's own optimizer does; L4
    # adds the loss: one all-reduce per device, whatever the variable count.
    if not with_plain:
        pytest.skip(
            f"TensorFlow {tf.__version__}'s MirroredStrategy reduces through one "
            "device here, with no collective ops to count (test_multi_worker.py "
            "counts them)"
        )
    assert len(with_l4) == len(with_plain) + len(DEVICES), (with_l4, with_plain)
