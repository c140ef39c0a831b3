"""The L4 update rule, as pure functions of tensors: the math, and only that.

Rolínek & Martius, "L4: Practical loss-based stepsize adaptation for deep
learning", NeurIPS 2018 (eqs. 3-6). At the optimizer's own step count ``t``,
with loss ``L`` and gradients ``grad_i``:

    L_min   = gamma0 * L  if t == 0  else  min(L_min, L)
    eta     = alpha * (L - gamma * L_min) / (sum_i <v_i, g_i> + eps)
    theta_i <- theta_i - eta * v_i
    L_min   <- (1 + 1/tau) * L_min;   t <- t + 1

``v_i`` (the direction) and ``g_i`` (the gradient estimate) are bias-corrected
exponential moving averages (EMAs) of the gradient, see `momentum` and `adam`.

Nothing here creates, reads or assigns a variable, or decides how a step
executes: `L4.execution` runs these functions over all variables (passes,
kernels, XLA), and `L4.step_driver` writes the result into the front ends'
variables.
"""

from collections.abc import Sequence
from typing import NamedTuple

import tensorflow as tf


class EMA(NamedTuple):
    """How one EMA of the gradient is kept: ``ema <- decay * ema + (1 - decay) * grad**power``.

    ``decay`` is ``1 - 1/T`` for the EMA's time scale ``T``.
    """

    power: int
    decay: float


class Estimator(NamedTuple):
    """A bias-corrected EMA transform of the gradient.

    ``kind`` is ``'momentum'`` (output ``m_hat``) or ``'adam'`` (output
    ``m_hat / (sqrt(s_hat) + epsilon)``); ``emas`` are the EMAs it reads, the first
    moment first.
    """

    kind: str
    emas: tuple[EMA, ...]
    epsilon: float = 0.0


def momentum(time_momentum: float = 10.0) -> Estimator:
    """``m <- d*m + (1-d)*grad``, ``d = 1 - 1/time_momentum``; outputs ``m / (1 - d^(t+1))``."""
    return Estimator("momentum", (EMA(1, 1.0 - 1.0 / time_momentum),))


def adam(
    time_scale_grad: float = 10.0, time_scale_var: float = 1000.0, epsilon: float = 1e-4
) -> Estimator:
    """Adam's direction ``m_hat / (sqrt(s_hat) + epsilon)`` with bias-corrected EMAs.

    ``m`` averages ``grad`` over ``time_scale_grad`` steps and ``s`` averages
    ``grad**2`` over ``time_scale_var`` steps; ``epsilon`` is added after the root.
    """
    return Estimator(
        "adam",
        (EMA(1, 1.0 - 1.0 / time_scale_grad), EMA(2, 1.0 - 1.0 / time_scale_var)),
        epsilon,
    )


ESTIMATORS = {"momentum": momentum, "adam": adam}


class Layout(NamedTuple):
    """Which EMAs a (direction, gradient) pair keeps, each once.

    ``emas`` lists the distinct EMAs, the direction's first, and ``names``
    their slot names (``m``, ``v`` as in Adam; ``g_m``, ``g_v`` for EMAs that
    only the gradient estimate reads). ``direction`` and ``gradient`` index
    into them. With L4Adam's defaults the gradient estimate is Adam's first
    moment, and L4Mom's two estimators are one EMA.
    """

    emas: tuple[EMA, ...]
    names: tuple[str, ...]
    direction: tuple[int, ...]
    gradient: tuple[int, ...]


def layout(direction: Estimator, gradient: Estimator) -> Layout:
    emas = list(direction.emas)
    names = ["m" if m.power == 1 else "v" for m in emas]
    for ema in gradient.emas:
        if ema not in emas:
            emas.append(ema)
            names.append("g_m" if ema.power == 1 else "g_v")
    return Layout(
        tuple(emas),
        tuple(names),
        tuple(emas.index(m) for m in direction.emas),
        tuple(emas.index(m) for m in gradient.emas),
    )


class Rule(NamedTuple):
    """The hyperparameters of L4 other than alpha (which may change per step).

    minloss_factor: gamma; init_factor: gamma0; minloss_forget_time: tau;
    epsilon: eps in the stepsize's denominator (these four may also be scalar
    tensors, as TF1 code feeds hyperparameters). Beyond the paper:
    ``loss_lower_bound`` is the value the loss cannot go below (L4 works on
    ``L - loss_lower_bound``; the paper's 0 by default), and
    ``max_effective_learning_rate`` caps eta (`None`: no cap, as the paper).
    """

    minloss_factor: float
    init_factor: float
    minloss_forget_time: float
    epsilon: float
    direction_estimator: Estimator
    gradient_estimator: Estimator
    loss_lower_bound: float = 0.0
    max_effective_learning_rate: float | None = None

    @property
    def layout(self) -> Layout:
        return layout(self.direction_estimator, self.gradient_estimator)


class State(NamedTuple):
    """The scalar state: ``step`` is t (int64), ``min_loss`` is L_min;
    ``skipped`` counts the steps skipped for a non-finite loss or update."""

    step: tf.Tensor
    min_loss: tf.Tensor
    skipped: tf.Tensor


def compute_dtype(dtype: tf.DType) -> tf.DType:
    """EMAs and updates are computed in at least float32 (half types overflow)."""
    return tf.float64 if tf.as_dtype(dtype) == tf.float64 else tf.float32


def scalar_dtype(loss_dtype: tf.DType, var_dtypes: Sequence[tf.DType]) -> tf.DType:
    """The dtype of L, L_min and eta: float64 if any input is, else float32."""
    dtypes = [tf.as_dtype(loss_dtype)] + [tf.as_dtype(d) for d in var_dtypes]
    return tf.float64 if tf.float64 in dtypes else tf.float32


def update_ema(spec: EMA, ema, grad):
    """``ema <- decay * ema + (1 - decay) * grad**power``.

    ``1 - decay`` is formed in the EMA's dtype, from ``decay`` rounded to it,
    as TensorFlow's Adam kernel (and the original release's
    ``ExponentialMovingAverage``) form it: in float32, ``1 - 0.999`` is then
    0.00099998713, not 0.001, and every path computes the same numbers.
    """
    value = grad if spec.power == 1 else tf.square(grad)
    decay = tf.constant(spec.decay, ema.dtype)
    return decay * ema + (1 - decay) * value


def estimate(estimator: Estimator, emas, epsilon=None):
    """``u``, the output of ``estimator`` before its scalar bias correction.

    ``emas`` are the estimator's EMAs after this step's update and ``epsilon``
    the second value of `bias_corrections`, with ``c = 1 - d^(t+1)`` for each
    EMA; the bias-corrected output is ``bias_corrections(...)[0] * u``.
    Momentum: ``m / c``, that is ``(1/c) * m``. Adam:
    ``(m / c1) / (sqrt(s / c2) + eps)``, that is
    ``(sqrt(c2) / c1) * m / (sqrt(s) + eps * sqrt(c2))``. The corrections stay
    in the scalar, which saves passes over the arrays.
    """
    if estimator.kind == "momentum":
        return emas[0]
    return emas[0] / (tf.sqrt(emas[1]) + epsilon)


class Powers:
    """``d^(t+1)`` for each decay ``d`` and dtype, each computed once per step
    (in a graph every scalar op costs time)."""

    def __init__(self, step):
        self._step = step
        self._cache = {}

    def __call__(self, decay, dtype):
        key = (decay, dtype)
        if key not in self._cache:
            count = self._cache.get(dtype)
            if count is None:
                count = self._cache[dtype] = tf.cast(self._step + 1, dtype)
            self._cache[key] = tf.pow(tf.constant(decay, dtype), count)
        return self._cache[key]


def bias_corrections(estimator, powers: Powers, dtype):
    """``estimate``'s scale (``1/c1``, or ``sqrt(c2)/c1`` for Adam) and ``eps * sqrt(c2)``.

    They depend on t only (through ``powers``): one computation per step
    serves every variable.
    """
    c1 = 1.0 - powers(estimator.emas[0].decay, dtype)
    if estimator.kind == "momentum":
        return 1.0 / c1, None
    root_c2 = tf.sqrt(1.0 - powers(estimator.emas[1].decay, dtype))
    return root_c2 / c1, estimator.epsilon * root_c2


def direction_bound(estimator: Estimator):
    """A bound on every element of Adam's ``u = m / (sqrt(s) + eps')``, or `None`.

    By Cauchy-Schwarz over the EMAs' weights, ``|m| <= C * sqrt(s)`` with
    ``C^2 = (1-d1)^2 / ((1-d2) (1 - d1^2/d2))`` when ``d1^2 < d2`` (true for
    the defaults: C = 7.3). Momentum has no such bound.
    """
    if estimator.kind != "adam":
        return None
    d1, d2 = estimator.emas[0].decay, estimator.emas[1].decay
    if d2 == 0.0 or d1 * d1 >= d2:
        return None
    return ((1 - d1) ** 2 / ((1 - d2) * (1 - d1 * d1 / d2))) ** 0.5


def update_min_loss(min_loss, loss, step, init_factor):
    """Step 1: ``L_min = gamma0 * L`` at t = 0, else ``min(L_min, L)``."""
    return tf.where(tf.equal(step, 0), init_factor * loss, tf.minimum(min_loss, loss))


def stepsize(fraction, loss, min_loss, inner_product, minloss_factor, epsilon):
    """Step 3: ``eta = alpha * (L - gamma * L_min) / (<v, g> + eps)``."""
    return fraction * (loss - minloss_factor * min_loss) / (inner_product + epsilon)


def forget_min_loss(min_loss, minloss_forget_time):
    """Step 5: ``L_min <- (1 + 1/tau) * L_min``."""
    return (1.0 + 1.0 / minloss_forget_time) * min_loss


def _as_scalar(value, dtype):
    # tf.cast of a Python float goes through float32 first and loses digits.
    if isinstance(value, (int, float)):
        return tf.constant(value, dtype)
    return tf.cast(value, dtype)


def variable_terms(rule: Rule, grad, emas, v_epsilon, g_epsilon):
    """One variable's new EMAs, and ``u`` of the direction and of the gradient
    estimate (see `estimate`; ``*_epsilon`` from `bias_corrections`)."""
    lay = rule.layout
    grad = tf.cast(grad, compute_dtype(grad.dtype))
    emas = [update_ema(m, ema, grad) for m, ema in zip(lay.emas, emas)]
    v = estimate(rule.direction_estimator, [emas[i] for i in lay.direction], v_epsilon)
    if rule.direction_estimator == rule.gradient_estimator:
        return emas, v, v
    return (
        emas,
        v,
        estimate(rule.gradient_estimator, [emas[i] for i in lay.gradient], g_epsilon),
    )


class Scalars(NamedTuple):
    """A step's scalars: ``effective_learning_rate`` is eta, ``min_loss`` the
    L_min it used (before forgetting), ``state`` the state after the step, and
    ``finite`` whether the loss, ``<v, g>`` and eta are finite and the loss is
    not below its bound."""

    effective_learning_rate: tf.Tensor
    min_loss: tf.Tensor
    state: State
    finite: tf.Tensor


def scalar_step(
    rule: Rule, fraction, loss, inner_product, state: State, dtype
) -> Scalars:
    """Steps 1, 3 and 5 of the rule, given ``<v, g>`` (``inner_product``).

    L4 works on the loss above ``rule.loss_lower_bound``; L_min is kept in the
    loss's units. Everything is computed in ``dtype``.
    """
    bound = tf.constant(rule.loss_lower_bound, dtype)
    loss = tf.cast(loss, dtype) - bound
    min_loss = update_min_loss(
        tf.cast(state.min_loss, dtype) - bound,
        loss,
        state.step,
        _as_scalar(rule.init_factor, dtype),
    )
    eta = stepsize(
        _as_scalar(fraction, dtype),
        loss,
        min_loss,
        inner_product,
        _as_scalar(rule.minloss_factor, dtype),
        _as_scalar(rule.epsilon, dtype),
    )
    if rule.max_effective_learning_rate is not None:
        eta = tf.minimum(eta, tf.constant(rule.max_effective_learning_rate, dtype))
    finite = tf.reduce_all(
        tf.math.is_finite(tf.stack([loss, inner_product, eta])) & (loss >= 0)
    )
    forgotten = forget_min_loss(min_loss, _as_scalar(rule.minloss_forget_time, dtype))
    return Scalars(
        effective_learning_rate=eta,
        min_loss=min_loss + bound,
        state=State(state.step + 1, forgotten + bound, state.skipped),
        finite=finite,
    )
