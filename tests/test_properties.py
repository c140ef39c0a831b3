"""Property tests (hypothesis) of L4 over random shapes, dtypes and hyperparameters."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import L4
import L4.compat

pytestmark = pytest.mark.eager
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)

shapes = st.lists(
    st.lists(st.integers(1, 4), min_size=0, max_size=3), min_size=1, max_size=3
)
dtypes = st.sampled_from([tf.float16, tf.bfloat16, tf.float32, tf.float64])
hyperparameters = st.fixed_dictionaries(
    {
        "fraction": st.floats(0.01, 1.0),
        "minloss_factor": st.floats(0.0, 1.0),
        "init_factor": st.floats(0.0, 1.0),
        "minloss_forget_time": st.floats(1.0, 1e4),
        "direction_estimator": st.sampled_from(["adam", "momentum"]),
        "gradient_estimator": st.sampled_from(["adam", "momentum"]),
    }
)
front_ends = st.sampled_from([L4.L4General, L4.compat.L4General])


@SETTINGS
@given(shapes, dtypes, hyperparameters, front_ends, st.integers(0, 2**31 - 1))
def test_finite_inputs_never_give_non_finite_variables(
    shapes, dtype, kwargs, front, seed
):
    rng = np.random.default_rng(seed)
    big = 1e4 if dtype == tf.float16 else 1e30
    var_list = [tf.Variable(tf.constant(rng.normal(size=s), dtype)) for s in shapes]
    opt = front(**kwargs)
    for _ in range(6):
        # Gradients from zero to huge, losses from zero to huge: all finite.
        scale = rng.choice([0.0, 1e-30, 1e-8, 1.0, big])
        grads = [tf.constant(scale * rng.normal(size=s), dtype) for s in shapes]
        loss = tf.constant(
            rng.choice([0.0, 1e-20, 1.0, big]) * rng.random(), tf.float32
        )
        opt.apply_gradients(list(zip(grads, var_list)), loss=loss)
    for v in var_list:
        assert np.isfinite(tf.cast(v, tf.float64).numpy()).all(), v


def _train_quadratic(make_optimizer, targets, curvature, c, steps=10):
    """Trains on c * 0.5 * sum(curvature * (x - target)^2); the trajectory."""
    var_list = [tf.Variable(tf.zeros_like(t)) for t in targets]
    opt = make_optimizer()
    trajectory = []
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = c * tf.add_n(
                [
                    0.5 * tf.reduce_sum(k * tf.square(v - t))
                    for v, t, k in zip(var_list, targets, curvature)
                ]
            )
        opt.apply_gradients(zip(tape.gradient(loss, var_list), var_list), loss=loss)
        trajectory.append([v.numpy().copy() for v in var_list])
    return trajectory


def _quadratic(shapes, seed):
    rng = np.random.default_rng(seed)
    targets = [tf.constant(rng.normal(size=s) + 2.0) for s in shapes]
    curvature = [tf.constant(rng.uniform(0.5, 2.0, size=s)) for s in shapes]
    return targets, curvature


# The epsilons (eps in eta's denominator, Adam's eps_a after the root) are the
# only terms that do not scale with the loss; with them at 0 the trajectory
# is the same to round-off.
WITHOUT_EPSILONS = [
    lambda: L4.L4Mom(epsilon=0.0),
    lambda: L4.L4Adam(epsilon=0.0, adam_params={"epsilon": 0.0}),
    lambda: L4.compat.L4Mom(epsilon=0.0),
    lambda: L4.compat.L4Adam(epsilon=0.0, adam_params={"epsilon": 0.0}),
]


@SETTINGS
@given(
    shapes,
    st.floats(1e-3, 1e3),
    st.sampled_from(WITHOUT_EPSILONS),
    st.integers(0, 2**31 - 1),
)
def test_scaling_the_loss_leaves_the_first_10_steps_unchanged(
    shapes, c, make_optimizer, seed
):
    targets, curvature = _quadratic(shapes, seed)
    base = _train_quadratic(make_optimizer, targets, curvature, 1.0)
    scaled = _train_quadratic(make_optimizer, targets, curvature, c)
    for a, b in zip(scaled, base):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)


@SETTINGS
@given(shapes, hyperparameters, st.integers(0, 2**31 - 1))
def test_the_step_never_points_uphill_along_the_gradient_estimate(shapes, kwargs, seed):
    rng = np.random.default_rng(seed)
    kwargs = dict(
        kwargs, gradient_estimator="momentum"
    )  # g is the EMA in slot m or g_m
    var_list = [tf.Variable(rng.normal(size=s)) for s in shapes]
    opt = L4.L4General(**kwargs)
    slot = "m" if kwargs["direction_estimator"] == "momentum" else None
    for _ in range(8):
        grads = [tf.constant(rng.normal(size=s)) for s in shapes]
        loss = tf.constant(rng.exponential(), tf.float64)  # non-negative
        before = [v.numpy().copy() for v in var_list]
        opt.apply_gradients(list(zip(grads, var_list)), loss=loss)
        name = slot or ("m" if "g_m" not in opt.get_slot_names() else "g_m")
        g = [opt.get_slot(v, name).numpy() for v in var_list]
        along_g = sum(
            float(np.sum((v.numpy() - b) * gi)) for v, b, gi in zip(var_list, before, g)
        )
        assert along_g <= 1e-12 * max(1.0, sum(float(np.sum(gi * gi)) for gi in g))
        assert float(opt.effective_learning_rate.numpy()) >= 0.0
