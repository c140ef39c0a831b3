"""An independent numpy statement of the L4 rule (Rolínek & Martius, "L4:
Practical loss-based stepsize adaptation for deep learning", NeurIPS 2018), for
tests only.

It shares no code with the package: everything is written out again in float64
numpy, straight from the paper.
"""

import numpy as np


class MomentumEstimator:
    """``m <- d*m + (1-d)*grad``, output ``m / (1 - d^(t+1))``."""

    def __init__(self, time_momentum=10.0):
        self.d = 1.0 - 1.0 / time_momentum
        self.m = None

    def __call__(self, grads, t):
        if self.m is None:
            self.m = [np.zeros_like(g) for g in grads]
        self.m = [self.d * m + (1 - self.d) * g for m, g in zip(self.m, grads)]
        return [m / (1 - self.d ** (t + 1)) for m in self.m]


class AdamEstimator:
    """Bias-corrected ``m / (sqrt(s) + eps_a)``, the epsilon after the root."""

    def __init__(self, time_scale_grad=10.0, time_scale_var=1000.0, epsilon=1e-4):
        self.d1 = 1.0 - 1.0 / time_scale_grad
        self.d2 = 1.0 - 1.0 / time_scale_var
        self.eps = epsilon
        self.m = self.s = None

    def __call__(self, grads, t):
        if self.m is None:
            self.m = [np.zeros_like(g) for g in grads]
            self.s = [np.zeros_like(g) for g in grads]
        self.m = [self.d1 * m + (1 - self.d1) * g for m, g in zip(self.m, grads)]
        self.s = [self.d2 * s + (1 - self.d2) * g * g for s, g in zip(self.s, grads)]
        return [
            (m / (1 - self.d1 ** (t + 1)))
            / (np.sqrt(s / (1 - self.d2 ** (t + 1))) + self.eps)
            for m, s in zip(self.m, self.s)
        ]


ESTIMATORS = {"momentum": MomentumEstimator, "adam": AdamEstimator}


class L4Reference:
    """The paper's rule, one `step` at a time, on a list of float64 arrays."""

    def __init__(
        self,
        params,
        fraction=0.15,
        minloss_factor=0.9,
        init_factor=0.75,
        minloss_forget_time=1000.0,
        epsilon=1e-12,
        gradient_estimator="momentum",
        gradient_params=None,
        direction_estimator="adam",
        direction_params=None,
    ):
        self.params = [np.array(p, dtype=np.float64) for p in params]
        self.alpha, self.gamma, self.gamma0 = fraction, minloss_factor, init_factor
        self.tau, self.eps = minloss_forget_time, epsilon
        self.g_est = ESTIMATORS[gradient_estimator](**(gradient_params or {}))
        self.v_est = ESTIMATORS[direction_estimator](**(direction_params or {}))
        self.t = 0
        self.min_loss = None
        self.eta = None
        self.min_loss_used = None

    def step(self, loss, grads, fraction=None):
        """One step; ``fraction`` overrides alpha for this step (a schedule)."""
        alpha = self.alpha if fraction is None else fraction
        grads = [np.asarray(g, dtype=np.float64) for g in grads]
        loss = float(loss)
        self.min_loss = self.gamma0 * loss if self.t == 0 else min(self.min_loss, loss)
        v = self.v_est(grads, self.t)
        g = self.g_est(grads, self.t)
        inner = sum(float(np.sum(vi * gi)) for vi, gi in zip(v, g))
        self.eta = alpha * (loss - self.gamma * self.min_loss) / (inner + self.eps)
        self.params = [p - self.eta * vi for p, vi in zip(self.params, v)]
        self.min_loss_used = self.min_loss
        self.min_loss = (1 + 1 / self.tau) * self.min_loss
        self.t += 1
        return self.params


# Optimizer configurations shared by the tests: the reference's keyword
# arguments for each (the package's constructors take the same ones).
L4ADAM = dict(direction_estimator="adam", gradient_estimator="momentum")
L4MOM = dict(direction_estimator="momentum", gradient_estimator="momentum")
L4GENERAL_CUSTOM = dict(
    fraction=0.2,
    minloss_factor=0.8,
    init_factor=0.5,
    minloss_forget_time=100.0,
    epsilon=1e-10,
    gradient_estimator="adam",
    gradient_params=dict(time_scale_grad=5.0, time_scale_var=50.0, epsilon=1e-3),
    direction_estimator="momentum",
    direction_params=dict(time_momentum=4.0),
)
