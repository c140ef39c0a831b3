"""Every path computes the same L4 numbers: ref and resource variables (the
general path by selection under TF2's control flow, TensorFlow's fused Adam
kernel elsewhere), sparse and dense gradients, eager, tf.function, XLA and the
Keras optimizers agree to float32 rounding after 10 steps."""

import numpy as np
import pytest
import tensorflow as tf

import L4
import L4.compat

from harness import EAGER_MODES, GRAPH_MODES, run
from problems import LeastSquares

STEPS = 10
FLOAT32_ROUNDING = dict(rtol=1e-6, atol=1e-7)


class SmallGradients(LeastSquares):
    """Least squares with one feature 1e-4 times smaller: its weights' gradients
    are of the order of Adam's epsilon, where ``1 - beta2``'s rounding shows
    (a uniform change of the direction cancels in eta * v)."""

    def __init__(self):
        super().__init__()
        self.x[:, 0] *= 1e-4


class Gathered(SmallGradients):
    """The same loss, its weights read through ``tf.gather``: a sparse gradient."""

    def tf_loss(self, params):
        w, b = params
        rows = tf.range(tf.shape(w)[0])
        return super().tf_loss([tf.gather(w, rows), b])


PATHS = [
    (mode, gradient, front)
    for mode in GRAPH_MODES[:2] + EAGER_MODES
    for gradient in ("dense", "sparse")
    for front in ("v1", "keras")
    if front == "v1" or mode in EAGER_MODES
]


def final_params(name, mode, gradient, front):
    module = L4 if front == "v1" else L4.compat
    problem = Gathered() if gradient == "sparse" else SmallGradients()
    form = "minimize" if front == "v1" else "keyword_loss"
    records = run(mode, problem, getattr(module, name), STEPS, form=form).records
    return records[-1]


@pytest.mark.parametrize("name", ["L4Adam", "L4Mom"])
@pytest.mark.parametrize(
    "mode,gradient,front",
    [
        pytest.param(*p, marks=pytest.mark.eager if p[0] in EAGER_MODES else ())
        for p in PATHS
    ],
    ids=["-".join(p) for p in PATHS],
)
def test_every_path_computes_the_same_numbers(name, mode, gradient, front):
    expected = final_params(name, "graph_resource", "dense", "v1")
    actual = final_params(name, mode, gradient, front)
    for a, e in zip(actual.params, expected.params):
        np.testing.assert_allclose(a, e, **FLOAT32_ROUNDING)
    np.testing.assert_allclose(actual.eta, expected.eta, **FLOAT32_ROUNDING)
