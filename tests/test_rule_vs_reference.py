"""L4.L4Adam, L4.L4Mom and L4.L4General follow the numpy reference step by step."""

import pytest
import tensorflow as tf

import L4

from harness import FORMS, MODES, assert_records_close, reference_run, run
from l4_reference import L4ADAM, L4GENERAL_CUSTOM, L4MOM
from problems import PROBLEMS

OPTIMIZERS = {
    "L4Adam": (lambda: L4.L4Adam(), L4ADAM),
    "L4Mom": (lambda: L4.L4Mom(), L4MOM),
    "L4General_custom": (lambda: L4.L4General(**L4GENERAL_CUSTOM), L4GENERAL_CUSTOM),
}
STEPS = 50


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("mode", MODES)
def test_follows_reference(mode, optimizer, dtype):
    make_optimizer, reference_kwargs = OPTIMIZERS[optimizer]
    problem = PROBLEMS["least_squares"]()
    actual = run(mode, problem, make_optimizer, STEPS, dtype).records
    assert_records_close(
        actual, reference_run(problem, STEPS, **reference_kwargs), dtype
    )


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mode", MODES)
def test_every_calling_form_gives_the_same_numbers(mode, form):
    problem = PROBLEMS["logistic"]()
    actual = run(
        mode, problem, lambda: L4.L4Adam(fraction=0.25), 20, tf.float64, form
    ).records
    expected = reference_run(problem, 20, fraction=0.25, **L4ADAM)
    assert_records_close(actual, expected, tf.float64)


def test_reference_is_not_trivially_satisfied():
    """The comparison can fail: another fraction gives other numbers."""
    problem = PROBLEMS["least_squares"]()
    actual = run(
        "graph_resource", problem, lambda: L4.L4Adam(fraction=0.16), 5, tf.float64
    ).records
    with pytest.raises(AssertionError):
        assert_records_close(actual, reference_run(problem, 5, **L4ADAM), tf.float64)


@pytest.mark.parametrize("mode", ["graph_resource", "eager"])
def test_first_step_stepsize_formula(mode):
    """At t = 0: eta = alpha * (1 - gamma * gamma0) * L / <v, g>, and v = g = sign-ish."""
    problem = PROBLEMS["least_squares"]()
    records = run(mode, problem, lambda: L4.L4Mom(), 1, tf.float64).records
    loss, grads = problem.numpy_loss_and_grads(problem.init)
    # At t = 0 L4Mom's v = g = the gradient itself (the bias correction undoes 1 - d).
    inner = sum(float((g * g).sum()) for g in grads)
    expected = 0.15 * (1 - 0.9 * 0.75) * loss / inner
    assert records[0].eta == pytest.approx(expected, rel=1e-12)
