"""The L4 update rule, as plain functions of tensors.

Rolínek & Martius, "L4: Practical loss-based stepsize adaptation for deep
learning", NeurIPS 2018. At the optimizer's own step count ``t``, with loss
``L`` and gradients ``grad_i``:

    L_min   = gamma0 * L  if t == 0  else  min(L_min, L)
    eta     = alpha * (L - gamma * L_min) / (sum_i <v_i, g_i> + eps)
    theta_i <- theta_i - eta * v_i
    L_min   <- (1 + 1/tau) * L_min;   t <- t + 1

``v_i`` (the direction) and ``g_i`` (the gradient estimate) are bias-corrected
exponential moving averages (EMAs) of the gradient, see `momentum` and `adam`.

Nothing here creates, reads or assigns a variable: the front ends
(`L4.optimizers` for ``tf.compat.v1``, `L4.compat` for Keras) keep the state in
variables and pass its values through `l4_step`. This is the only place that
computes the rule.
"""

from collections.abc import Sequence
from typing import NamedTuple

import tensorflow as tf


class Moment(NamedTuple):
    """One EMA of the gradient: ``ema <- decay * ema + (1 - decay) * grad**power``.

    ``decay`` is ``1 - 1/T`` for the EMA's time scale ``T``.
    """

    power: int
    decay: float


class Estimator(NamedTuple):
    """A bias-corrected EMA transform of the gradient.

    ``kind`` is ``'momentum'`` (output ``m_hat``) or ``'adam'`` (output
    ``m_hat / (sqrt(s_hat) + epsilon)``); ``moments`` are the EMAs it reads, the
    first moment first.
    """

    kind: str
    moments: tuple[Moment, ...]
    epsilon: float = 0.0


def momentum(time_momentum: float = 10.0) -> Estimator:
    """``m <- d*m + (1-d)*grad``, ``d = 1 - 1/time_momentum``; outputs ``m / (1 - d^(t+1))``."""
    return Estimator("momentum", (Moment(1, 1.0 - 1.0 / time_momentum),))


def adam(
    time_scale_grad: float = 10.0, time_scale_var: float = 1000.0, epsilon: float = 1e-4
) -> Estimator:
    """Adam's direction ``m_hat / (sqrt(s_hat) + epsilon)`` with bias-corrected EMAs.

    ``m`` averages ``grad`` over ``time_scale_grad`` steps and ``s`` averages
    ``grad**2`` over ``time_scale_var`` steps; ``epsilon`` is added after the root.
    """
    return Estimator(
        "adam",
        (Moment(1, 1.0 - 1.0 / time_scale_grad), Moment(2, 1.0 - 1.0 / time_scale_var)),
        epsilon,
    )


ESTIMATORS = {"momentum": momentum, "adam": adam}


class Layout(NamedTuple):
    """Which EMAs a (direction, gradient) pair keeps, each once.

    ``moments`` lists the distinct EMAs, the direction's first, and ``names``
    their slot names (``m``, ``v`` as in Adam; ``g_m``, ``g_v`` for EMAs that
    only the gradient estimate reads). ``direction`` and ``gradient`` index
    into them. With L4Adam's defaults the gradient estimate is Adam's first
    moment, and L4Mom's two estimators are one EMA.
    """

    moments: tuple[Moment, ...]
    names: tuple[str, ...]
    direction: tuple[int, ...]
    gradient: tuple[int, ...]


def layout(direction: Estimator, gradient: Estimator) -> Layout:
    moments = list(direction.moments)
    names = ["m" if m.power == 1 else "v" for m in moments]
    for moment in gradient.moments:
        if moment not in moments:
            moments.append(moment)
            names.append("g_m" if moment.power == 1 else "g_v")
    return Layout(
        tuple(moments),
        tuple(names),
        tuple(moments.index(m) for m in direction.moments),
        tuple(moments.index(m) for m in gradient.moments),
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
    direction: Estimator
    gradient: Estimator
    loss_lower_bound: float = 0.0
    max_effective_learning_rate: float | None = None

    @property
    def layout(self) -> Layout:
        return layout(self.direction, self.gradient)


class State(NamedTuple):
    """The scalar state: ``step`` is t (int64), ``min_loss`` is L_min;
    ``skipped`` counts the steps skipped for a non-finite loss or update."""

    step: tf.Tensor
    min_loss: tf.Tensor
    skipped: tf.Tensor


# How a variable's update is applied (`update_kind`).
GENERAL = "general"  # descent along the computed direction; the EMAs assigned
ADAM = "adam"  # TensorFlow's fused Adam kernel recomputes the EMAs and updates


class AdamKernel(NamedTuple):
    """The scalars of TensorFlow's ``ApplyAdam`` kernel that make its update
    L4Adam's: ``lr = eta``, ``beta_power = d^(t+1)``, ``epsilon = eps_a *
    sqrt(1 - d2^(t+1))``. The kernel then takes
    ``theta -= eta * (sqrt(c2)/c1) * m / (sqrt(s) + eps_a * sqrt(c2))``, which
    is ``eta * m_hat / (sqrt(s_hat) + eps_a)`` (see `estimate`)."""

    lr: tf.Tensor
    beta1_power: tf.Tensor
    beta2_power: tf.Tensor
    beta1: tf.Tensor
    beta2: tf.Tensor
    epsilon: tf.Tensor


class Step(NamedTuple):
    """What one step yields.

    ``ok`` says whether the step is taken. If it is, the state becomes
    ``state`` and each variable is updated as ``kinds[i]`` says: `GENERAL`:
    theta_i decreases by ``direction_scale * directions[i]`` (which is
    eta * v_i) and its EMAs become ``moments[i]``; `ADAM`: TensorFlow's Adam
    kernel with ``adam_kernel[dtype]`` does both from the gradient
    (``directions[i]`` and ``moments[i]`` are `None`). If not, only the state
    changes, to ``skipped_state`` (the skip counted).
    ``effective_learning_rate`` is eta (0 for a skipped step) and ``min_loss``
    the L_min it used, before forgetting.
    """

    ok: tf.Tensor
    kinds: tuple
    directions: list
    direction_scale: tf.Tensor
    moments: list
    adam_kernel: dict
    state: State
    skipped_state: State
    effective_learning_rate: tf.Tensor
    min_loss: tf.Tensor


def compute_dtype(dtype: tf.DType) -> tf.DType:
    """EMAs and updates are computed in at least float32 (half types overflow)."""
    return tf.float64 if tf.as_dtype(dtype) == tf.float64 else tf.float32


def scalar_dtype(loss_dtype: tf.DType, var_dtypes: Sequence[tf.DType]) -> tf.DType:
    """The dtype of L, L_min and eta: float64 if any input is, else float32."""
    dtypes = [tf.as_dtype(loss_dtype)] + [tf.as_dtype(d) for d in var_dtypes]
    return tf.float64 if tf.float64 in dtypes else tf.float32


def dense_gradient(grad, var):
    """``grad`` as a dense tensor shaped like ``var``, in ``var``'s dtype.

    A sparse gradient (``tf.IndexedSlices``, from ``tf.gather`` or embeddings)
    becomes the sum of its slices: the EMAs decay everywhere anyway, and
    repeated indices add up as they do in the dense gradient. A gradient of
    another dtype is cast, as Keras' optimizers do.
    """
    dtype = tf.as_dtype(var.dtype).base_dtype
    if isinstance(grad, tf.IndexedSlices):
        indices = tf.convert_to_tensor(grad.indices)  # may be a Python list
        rows = tf.shape(var, out_type=indices.dtype)[0]
        values = tf.cast(grad.values, dtype)
        return tf.math.unsorted_segment_sum(values, indices, rows)
    return tf.cast(grad, dtype)


def update_moment(moment: Moment, ema, grad):
    """``ema <- decay * ema + (1 - decay) * grad**power``."""
    value = grad if moment.power == 1 else tf.square(grad)
    return moment.decay * ema + (1.0 - moment.decay) * value


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
    c1 = 1.0 - powers(estimator.moments[0].decay, dtype)
    if estimator.kind == "momentum":
        return 1.0 / c1, None
    root_c2 = tf.sqrt(1.0 - powers(estimator.moments[1].decay, dtype))
    return root_c2 / c1, estimator.epsilon * root_c2


def direction_bound(estimator: Estimator):
    """A bound on every element of Adam's ``u = m / (sqrt(s) + eps')``, or `None`.

    By Cauchy-Schwarz over the EMAs' weights, ``|m| <= C * sqrt(s)`` with
    ``C^2 = (1-d1)^2 / ((1-d2) (1 - d1^2/d2))`` when ``d1^2 < d2`` (true for
    the defaults: C = 7.3). Momentum has no such bound.
    """
    if estimator.kind != "adam":
        return None
    d1, d2 = estimator.moments[0].decay, estimator.moments[1].decay
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


def xla_available() -> bool:
    """Whether this TensorFlow can compile with XLA (its CPU and GPU builds can)."""
    return tf.test.is_built_with_xla()


def update_kind(rule: Rule, var_dtype, fuse: bool = True) -> str:
    """How a variable of ``var_dtype`` is updated: `ADAM` or `GENERAL`.

    `ADAM` where TensorFlow's fused Adam kernel computes exactly L4's update:
    L4Adam's estimator pair (Adam's direction; the gradient estimate is
    Adam's own first moment), a float32 or float64 variable (the kernel keeps
    the EMAs in the variable's dtype, and half types keep them in float32),
    and XLA for the read-only pass that computes ``<v, g>`` first (without it
    that pass costs more than the kernel saves). ``fuse=False`` (where the
    step must be taken by selection) asks for `GENERAL`. Under
    ``jit_compile=True`` XLA compiles the kernel like any other op.
    """
    fusable = (
        fuse
        and rule.direction.kind == "adam"
        and rule.gradient.kind == "momentum"
        and rule.gradient.moments[0] == rule.direction.moments[0]
        and tf.as_dtype(var_dtype).base_dtype in (tf.float32, tf.float64)
        and xla_available()
    )
    return ADAM if fusable else GENERAL


def l4_step(
    rule: Rule, fraction, loss, grads, moments, state: State, fuse: bool = True
) -> Step:
    """One L4 step over all variables.

    The step is not taken when the loss, ``<v, g>`` or eta is not finite (one
    bad batch must not poison the EMAs and L_min for good), when the loss is
    below ``rule.loss_lower_bound``, or when an update could overflow its
    variable's dtype; the front ends branch on ``Step.ok`` (or use
    `select_taken`).

    The arrays are read in one pass before anything is written: for `ADAM`
    variables (see `update_kind`) an XLA-compiled pass that only reduces to
    ``<v_i, g_i>``, leaving the update to TensorFlow's Adam kernel; for the
    others one XLA-compiled pass (when ``fuse`` and XLA allow) that yields the
    new EMAs and directions.

    Args:
        rule: the hyperparameters, see `Rule`.
        fraction: alpha, a number or a scalar tensor.
        loss: L, the current loss, a scalar.
        grads: dense gradients, one per variable, in the variables' dtypes.
        moments: for each variable, the values of its EMAs in ``rule.layout`` order
            (in ``compute_dtype`` of the variable's dtype).
        state: t, L_min and the skip count before this step.
        fuse: whether fused kernels and XLA passes may serve; `False` when
            the caller takes the step by `select_taken`.

    Returns:
        A `Step`. Directions and EMAs are in each variable's compute dtype; eta,
        L_min and the inner product in ``scalar_dtype`` of the inputs.
    """
    dtype = scalar_dtype(loss.dtype, [g.dtype for g in grads])
    # L4 works on the loss above its lower bound; L_min is kept in loss units.
    bound = tf.constant(rule.loss_lower_bound, dtype)
    loss = tf.cast(loss, dtype) - bound
    step = state.step
    powers = Powers(step)
    same_estimate = rule.direction == rule.gradient
    kinds = tuple(update_kind(rule, g.dtype, fuse) for g in grads)

    corrections = {}  # per compute dtype: (direction's, gradient estimate's)

    def corrections_in(cdtype):
        if cdtype not in corrections:
            corrections[cdtype] = (
                bias_corrections(rule.direction, powers, cdtype),
                bias_corrections(rule.gradient, powers, cdtype),
            )
        return corrections[cdtype]

    def epsilons(grad):
        v_corrections, g_corrections = corrections_in(compute_dtype(grad.dtype))
        return v_corrections[1], g_corrections[1]

    use_xla = fuse and xla_available() and not in_xla_context()

    def read(indices, make_pass, compile_if):
        """(i, output) of one read pass over variables ``indices``; those whose
        gradient satisfies ``compile_if`` are read by one XLA call."""
        compiled = [i for i in indices if use_xla and compile_if(grads[i])]
        plain = [i for i in indices if i not in compiled]
        for group, jit_compile in ((compiled, True), (plain, False)):
            if group:
                args = [(grads[i], moments[i], *epsilons(grads[i])) for i in group]
                yield from zip(group, make_pass(rule, jit_compile)(args))

    directions, new_moments = [None] * len(grads), [None] * len(grads)
    dots = [None] * len(grads)
    fused = [i for i, kind in enumerate(kinds) if kind == ADAM]
    general = [i for i, kind in enumerate(kinds) if kind == GENERAL]
    # One XLA call reads every fused variable. On the general path it costs
    # more than it saves for small arrays, which plain ops read.
    for i, dot in read(fused, _dots_function, lambda grad: True):
        dots[i] = dot
    for i, (emas, v, g) in read(general, _terms_function, _is_large):
        new_moments[i], directions[i] = emas, v
        # With v = g, <v, g> = 2 * l2_loss(v): one kernel, no temporary. The
        # factor 2 is applied once per dtype below.
        dots[i] = tf.nn.l2_loss(v) if same_estimate else tf.reduce_sum(v * g)
    dot_factor = 2.0 if same_estimate else 1.0
    compute_dtypes = [compute_dtype(g.dtype) for g in grads]
    inner_product = _inner_product(dots, compute_dtypes, corrections, dot_factor, dtype)
    # A non-finite element of any v_i or g_i makes the sum non-finite.

    min_loss = update_min_loss(
        tf.cast(state.min_loss, dtype) - bound,
        loss,
        step,
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
    # The direction's scale is the same for every variable.
    direction_scale = eta * bias_corrections(rule.direction, powers, dtype)[0]

    ok = tf.reduce_all(
        tf.math.is_finite(tf.stack([loss, inner_product, eta])) & (loss >= 0)
    )
    # No update element may overflow its variable's dtype.
    ok &= _update_fits(rule, grads, directions, dots, dot_factor, direction_scale)

    old_min_loss = tf.cast(state.min_loss, dtype)
    return Step(
        ok=ok,
        kinds=kinds,
        directions=directions,
        direction_scale=direction_scale,
        moments=new_moments,
        adam_kernel={
            grads[i].dtype: adam_kernel(
                rule.direction, powers, eta, epsilons(grads[i])[0], grads[i].dtype
            )
            for i in fused
        },
        state=State(
            step=step + 1,
            min_loss=forget_min_loss(
                min_loss, _as_scalar(rule.minloss_forget_time, dtype)
            )
            + bound,
            skipped=state.skipped,
        ),
        skipped_state=State(
            step=step, min_loss=old_min_loss, skipped=state.skipped + 1
        ),
        effective_learning_rate=tf.where(ok, eta, tf.zeros_like(eta)),
        min_loss=min_loss + bound,
    )


def adam_kernel(estimator: Estimator, powers: Powers, eta, epsilon, dtype):
    """`AdamKernel`'s scalars for Adam's ``estimator`` this step, in ``dtype``;
    ``epsilon`` is ``eps_a * sqrt(c2)`` from `bias_corrections`."""
    d1, d2 = (m.decay for m in estimator.moments)
    return AdamKernel(
        lr=tf.cast(eta, dtype),
        beta1_power=powers(d1, dtype),
        beta2_power=powers(d2, dtype),
        beta1=tf.constant(d1, dtype),
        beta2=tf.constant(d2, dtype),
        epsilon=epsilon,
    )


def _variable_terms(rule: Rule, grad, emas, v_epsilon, g_epsilon):
    """One variable's new EMAs, ``u`` of the direction and of the gradient estimate."""
    lay = rule.layout
    grad = tf.cast(grad, compute_dtype(grad.dtype))
    emas = [update_moment(m, ema, grad) for m, ema in zip(lay.moments, emas)]
    v = estimate(rule.direction, [emas[i] for i in lay.direction], v_epsilon)
    if rule.direction == rule.gradient:
        return emas, v, v
    return emas, v, estimate(rule.gradient, [emas[i] for i in lay.gradient], g_epsilon)


_FUNCTIONS = {}


def _cached(key, make):
    if key not in _FUNCTIONS:
        _FUNCTIONS[key] = make()
    return _FUNCTIONS[key]


def _terms_function(rule: Rule, jit_compile: bool):
    """A function of ``[(grad, emas, v_epsilon, g_epsilon), ...]`` that returns
    ``[(new_emas, u_v, u_g), ...]``, compiled with XLA when ``jit_compile``."""
    if not jit_compile:
        return lambda args: [_variable_terms(rule, *a) for a in args]
    lay = rule.layout
    # Each array is returned once: momentum's estimate is its EMA, and with
    # equal estimators the gradient estimate is the direction. Picked out below.
    v_is_ema = rule.direction.kind == "momentum"
    g_is_ema = rule.gradient.kind == "momentum" or rule.direction == rule.gradient

    def compute(args):
        out = []
        for a in args:
            emas, v, g = _variable_terms(rule, *a)
            out.append((emas, None if v_is_ema else v, None if g_is_ema else g))
        return out

    compiled = _cached(
        ("terms", rule.direction, rule.gradient),
        lambda: tf.function(compute, jit_compile=True),
    )

    def call(args):
        terms = []
        for emas, v, g in compiled(args):
            if v is None:
                v = emas[lay.direction[0]]
            if g is None:
                g = v if rule.direction == rule.gradient else emas[lay.gradient[0]]
            terms.append((emas, v, g))
        return terms

    return call


# General-path arrays with fewer elements are read by plain TensorFlow ops,
# not by an XLA pass (L4Mom / momentum in a Session on the benchmarks' 100
# layers of 32 x 32 weights: 1.55 with XLA for all, 1.39 with this bound).
XLA_MIN_ELEMENTS = 2**14


def _is_large(tensor):
    size = tensor.shape.num_elements()
    return size is None or size >= XLA_MIN_ELEMENTS


def _dots_function(rule: Rule, jit_compile=True):
    """A function of ``[(grad, emas, v_epsilon, g_epsilon), ...]`` for `ADAM`
    variables that returns each ``<u_v, u_g>`` and writes nothing; compiled
    with XLA, which fuses the EMA updates, the estimate and the product into
    one read-only loop over each variable."""
    first, second = rule.layout.moments

    def compute(args):
        dots = []
        for grad, (m, s), epsilon, _ in args:
            m, s = update_moment(first, m, grad), update_moment(second, s, grad)
            # <u, m> with u = m / (sqrt(s) + eps'), written as sum(m^2 / ...):
            # XLA's CPU loop for sum(u * m) is 1.8 times slower (measured).
            dots.append(tf.reduce_sum(tf.square(m) / (tf.sqrt(s) + epsilon)))
        return dots

    if not jit_compile:
        return compute
    return _cached(
        ("dots", rule.direction, rule.gradient),
        lambda: tf.function(compute, jit_compile=True),
    )


def _inner_product(dots, compute_dtypes, corrections, dot_factor, dtype):
    """``sum_i <v_i, g_i>`` from the per-variable ``dots`` of the unscaled EMA
    transforms: the bias corrections multiply once per compute dtype, not once
    per variable (in a graph every op costs time, however small its input)."""
    dots_by_dtype = {}
    for cdtype, dot in zip(compute_dtypes, dots):
        dots_by_dtype.setdefault(cdtype, []).append(dot)
    return tf.add_n(
        [
            tf.cast(dot_factor * _scale_product(corrections[cdtype]) * _sum(d), dtype)
            for cdtype, d in dots_by_dtype.items()
        ]
    )


def _update_fits(rule, grads, directions, dots, dot_factor, direction_scale):
    """Whether every ``direction_scale * u_i`` element fits its variable's dtype.

    Checks a bound on the largest element, ``||u_i||``, or the analytic
    `direction_bound` where there is one: once per variable dtype.
    """
    u_bound = direction_bound(rule.direction)
    same_estimate = rule.direction == rule.gradient
    squared_norms = {}  # per variable dtype: ||u_i||^2, or a bound on them
    for grad, v, dot in zip(grads, directions, dots):
        squares = squared_norms.setdefault(grad.dtype, [])
        cdtype = compute_dtype(grad.dtype)
        if same_estimate:  # then dot_factor * dot is ||u_i||^2
            squares.append(dot)
        elif u_bound is not None and grad.dtype not in (tf.float16, tf.bfloat16):
            squares[:] = [tf.constant(u_bound**2, cdtype)]  # no pass over v
        else:  # the bound is too loose for half types' range
            squares.append(tf.reduce_sum(tf.square(v)))
    fits = []
    for var_dtype, squares in squared_norms.items():
        norm = tf.sqrt(dot_factor * _max(squares))
        largest = tf.cast(direction_scale, norm.dtype) * norm
        fits.append(tf.math.is_finite(tf.cast(largest, var_dtype)))
    return fits[0] if len(fits) == 1 else tf.reduce_all(tf.stack(fits))


def _scale_product(corrections):
    """The product of the direction's and the gradient estimate's scales."""
    (v_scale, _), (g_scale, _) = corrections
    return v_scale * g_scale


def _sum(scalars):
    return scalars[0] if len(scalars) == 1 else tf.add_n(scalars)


def _max(scalars):
    return scalars[0] if len(scalars) == 1 else tf.reduce_max(tf.stack(scalars))


def in_xla_context() -> bool:
    """Whether this code is being compiled by XLA (``jit_compile=True``)."""
    return tf.__internal__.get_enclosing_xla_context() is not None


def selection_is_cheaper(step: Step) -> bool:
    """Whether to skip by `select_taken` rather than by branching on ``Step.ok``.

    Under XLA (``jit_compile=True``) when every variable takes the general
    path: XLA fuses the selections into the loops that compute the update,
    while a conditional makes it write every tensor the branch takes in
    (L4Mom / momentum on the benchmarks' MLPs: 1.40 and 1.22 with selection,
    1.79 and 1.28 with a branch). The fused Adam kernel needs the branch
    (L4Adam: 1.83 and 1.20 with it, 2.17 and 1.40 by selection on the
    general path). Elsewhere each selection is one more pass over the
    arrays, and branching is cheaper.
    """
    return in_xla_context() and all(kind == GENERAL for kind in step.kinds)


def select_taken(step: Step, moments) -> Step:
    """``step`` with the skip done by selection instead of by branching.

    For graphs that cannot branch around assignments (ref variables under
    control flow v2), and where it is cheaper (`selection_is_cheaper`): every
    assignment of the result can run unconditionally, and a skipped step
    writes back the values it read. ``moments`` are the EMAs before the step.
    Every variable must take the general path (``fuse=False`` ensures it).
    """
    assert all(kind == GENERAL for kind in step.kinds), step.kinds
    ok = step.ok

    def keep(new, old):
        return tf.where(ok, new, old)

    return step._replace(
        ok=tf.constant(True),
        directions=[keep(v, tf.zeros_like(v)) for v in step.directions],
        direction_scale=keep(step.direction_scale, tf.zeros_like(step.direction_scale)),
        moments=[
            [keep(new, old) for new, old in zip(new_emas, old_emas)]
            for new_emas, old_emas in zip(step.moments, moments)
        ],
        state=State(*(keep(n, o) for n, o in zip(step.state, step.skipped_state))),
    )
