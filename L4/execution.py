"""How an L4 step executes: which path each variable takes, the passes that
read the arrays, and TensorFlow's fused kernels that write them.

`l4_step` computes one step of `L4.rule` over all variables and returns a
`Step`; `apply_update` writes one variable's part of a taken step. The
choices here change speed, never the numbers beyond float rounding (every
path forms ``1 - decay`` as TensorFlow's Adam kernel does; see
`L4.rule.update_ema`):

- `update_kind`: `ADAM` variables are updated by TensorFlow's fused Adam
  kernel after an XLA-compiled read-only pass for ``<v_i, g_i>``; `GENERAL`
  ones by one pass (XLA-compiled for large arrays) that yields the new EMAs
  and the direction, then a fused descent kernel.
- `selection_is_cheaper` / `select_taken`: skipping a non-finite step by
  selection instead of a branch, under XLA and where graphs cannot branch
  around assignments.
"""

import contextlib
from typing import NamedTuple

import tensorflow as tf

from L4 import rule as l4_rule
from L4.rule import Estimator, Powers, Rule, State, bias_corrections, compute_dtype

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
    eta * v_i) and its EMAs become ``emas[i]``; `ADAM`: TensorFlow's Adam
    kernel with ``adam_kernel[dtype]`` does both from the gradient
    (``directions[i]`` and ``emas[i]`` are `None`). If not, only the state
    changes, to ``skipped_state`` (the skip counted).
    ``effective_learning_rate`` is eta (0 for a skipped step) and ``min_loss``
    the L_min it used, before forgetting.
    """

    ok: tf.Tensor
    kinds: tuple
    directions: list
    direction_scale: tf.Tensor
    emas: list
    adam_kernel: dict
    state: State
    skipped_state: State
    effective_learning_rate: tf.Tensor
    min_loss: tf.Tensor


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
        and rule.direction_estimator.kind == "adam"
        and rule.gradient_estimator.kind == "momentum"
        and rule.gradient_estimator.emas[0] == rule.direction_estimator.emas[0]
        and tf.as_dtype(var_dtype).base_dtype in (tf.float32, tf.float64)
        and xla_available()
    )
    return ADAM if fusable else GENERAL


def _adam_kernels(rule, powers, eta, corrections, grads, kinds):
    """The Adam kernel's arguments per dtype of the variables it updates."""
    return {
        g.dtype: adam_kernel(
            rule.direction_estimator,
            powers,
            eta,
            corrections.epsilons(g)[0],
            g.dtype,
        )
        for g, kind in zip(grads, kinds)
        if kind == ADAM
    }


def l4_step(
    rule: Rule, fraction, loss, grads, emas, state: State, fuse: bool = True
) -> Step:
    """One L4 step over all variables: a `Step`.

    ``rule`` holds the hyperparameters, ``fraction`` is alpha (a number or a
    scalar tensor), ``loss`` the current loss, ``grads`` the dense gradients
    in the variables' dtypes, ``emas[i]`` the values of variable i's EMAs in
    ``rule.layout`` order (in its ``compute_dtype``) and ``state`` t, L_min
    and the skip count before the step. ``fuse=False`` keeps fused kernels
    and XLA passes out, for a caller that takes the step by `select_taken`.

    The step is not taken (``Step.ok`` is false) when the loss, ``<v, g>`` or
    eta is not finite (one bad batch must not poison the EMAs and L_min for
    good), when the loss is below ``rule.loss_lower_bound``, or when an update
    could overflow its variable's dtype. The arrays are read once, before
    anything is written (see `_read_arrays`).
    """
    dtype = l4_rule.scalar_dtype(loss.dtype, [g.dtype for g in grads])
    powers = Powers(state.step)
    corrections = _Corrections(rule, powers)
    kinds = tuple(update_kind(rule, g.dtype, fuse) for g in grads)
    use_xla = fuse and xla_available() and not in_xla_context()
    dots, directions, new_emas = _read_arrays(
        rule, grads, emas, kinds, corrections, use_xla
    )
    # With v = g the dots are l2_loss(v) = <v, v> / 2 (see `_read_arrays`).
    dot_factor = 2.0 if rule.direction_estimator == rule.gradient_estimator else 1.0
    compute_dtypes = [compute_dtype(g.dtype) for g in grads]
    # A non-finite element of any v_i or g_i makes the sum non-finite.
    inner_product = _inner_product(dots, compute_dtypes, corrections, dot_factor, dtype)
    scalars = l4_rule.scalar_step(rule, fraction, loss, inner_product, state, dtype)
    eta = scalars.effective_learning_rate
    # The direction's scale is the same for every variable.
    direction_scale = eta * bias_corrections(rule.direction_estimator, powers, dtype)[0]
    # No update element may overflow its variable's dtype.
    ok = scalars.finite & _update_fits(
        rule, grads, directions, dots, dot_factor, direction_scale
    )
    return Step(
        ok=ok,
        kinds=kinds,
        directions=directions,
        direction_scale=direction_scale,
        emas=new_emas,
        adam_kernel=_adam_kernels(rule, powers, eta, corrections, grads, kinds),
        state=scalars.state,
        skipped_state=State(
            step=state.step,
            min_loss=tf.cast(state.min_loss, dtype),
            skipped=state.skipped + 1,
        ),
        effective_learning_rate=tf.where(ok, eta, tf.zeros_like(eta)),
        min_loss=scalars.min_loss,
    )


class _Corrections:
    """`bias_corrections` of the direction and of the gradient estimate, per
    compute dtype, each computed once per step."""

    def __init__(self, rule: Rule, powers: Powers):
        self._rule, self._powers, self._cache = rule, powers, {}

    def __call__(self, cdtype):
        if cdtype not in self._cache:
            self._cache[cdtype] = (
                bias_corrections(self._rule.direction_estimator, self._powers, cdtype),
                bias_corrections(self._rule.gradient_estimator, self._powers, cdtype),
            )
        return self._cache[cdtype]

    def epsilons(self, grad):
        """The epsilons of the direction and of the gradient estimate for ``grad``."""
        v_corrections, g_corrections = self(compute_dtype(grad.dtype))
        return v_corrections[1], g_corrections[1]


def _read_arrays(rule, grads, emas, kinds, corrections, use_xla):
    """``(dots, directions, new_emas)``: every array read once.

    `ADAM` variables: one XLA call reduces them all to ``<u_v, u_g>`` and
    writes nothing; TensorFlow's Adam kernel then updates them. `GENERAL`
    ones: the new EMAs and ``u`` of the direction, by one XLA call for the
    large arrays (for small ones it costs more than it saves) and plain ops
    for the others; their dot is ``l2_loss(v)`` when ``v = g`` (one kernel,
    no temporary; the factor 2 is applied once per dtype).
    """
    count = len(grads)
    dots, directions, new_emas = [None] * count, [None] * count, [None] * count

    def read(kind, make_pass, compile_if):
        indices = [i for i in range(count) if kinds[i] == kind]
        compiled = [i for i in indices if use_xla and compile_if(grads[i])]
        plain = [i for i in indices if i not in compiled]
        for group, jit_compile in ((compiled, True), (plain, False)):
            if group:
                args = [
                    (grads[i], emas[i], *corrections.epsilons(grads[i])) for i in group
                ]
                yield from zip(group, make_pass(rule, jit_compile)(args))

    for i, dot in read(ADAM, _dots_function, lambda grad: True):
        dots[i] = dot
    same_estimate = rule.direction_estimator == rule.gradient_estimator
    for i, (updated, v, g) in read(GENERAL, _terms_function, _is_large):
        new_emas[i], directions[i] = updated, v
        dots[i] = tf.nn.l2_loss(v) if same_estimate else tf.reduce_sum(v * g)
    return dots, directions, new_emas


def adam_kernel(estimator: Estimator, powers: Powers, eta, epsilon, dtype):
    """`AdamKernel`'s scalars for Adam's ``estimator`` this step, in ``dtype``;
    ``epsilon`` is ``eps_a * sqrt(c2)`` from `bias_corrections`."""
    d1, d2 = (m.decay for m in estimator.emas)
    return AdamKernel(
        lr=tf.cast(eta, dtype),
        beta1_power=powers(d1, dtype),
        beta2_power=powers(d2, dtype),
        beta1=tf.constant(d1, dtype),
        beta2=tf.constant(d2, dtype),
        epsilon=epsilon,
    )


_FUNCTIONS = {}


def _cached(key, make):
    if key not in _FUNCTIONS:
        _FUNCTIONS[key] = make()
    return _FUNCTIONS[key]


def _terms_function(rule: Rule, jit_compile: bool):
    """A function of ``[(grad, emas, v_epsilon, g_epsilon), ...]`` that returns
    ``[(new_emas, u_v, u_g), ...]``, compiled with XLA when ``jit_compile``."""
    if not jit_compile:
        return lambda args: [l4_rule.variable_terms(rule, *a) for a in args]
    lay = rule.layout
    # Each array is returned once: momentum's estimate is its EMA, and with
    # equal estimators the gradient estimate is the direction. Picked out below.
    v_is_ema = rule.direction_estimator.kind == "momentum"
    g_is_ema = (
        rule.gradient_estimator.kind == "momentum"
        or rule.direction_estimator == rule.gradient_estimator
    )

    def compute(args):
        out = []
        for a in args:
            emas, v, g = l4_rule.variable_terms(rule, *a)
            out.append((emas, None if v_is_ema else v, None if g_is_ema else g))
        return out

    compiled = _cached(
        ("terms", rule.direction_estimator, rule.gradient_estimator),
        lambda: tf.function(compute, jit_compile=True),
    )

    def call(args):
        terms = []
        for emas, v, g in compiled(args):
            if v is None:
                v = emas[lay.direction[0]]
            if g is None:
                g = (
                    v
                    if rule.direction_estimator == rule.gradient_estimator
                    else emas[lay.gradient[0]]
                )
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
    first, second = rule.layout.emas

    def compute(args):
        dots = []
        for grad, (m, s), epsilon, _ in args:
            m, s = (
                l4_rule.update_ema(first, m, grad),
                l4_rule.update_ema(second, s, grad),
            )
            # <u, m> with u = m / (sqrt(s) + eps'), written as sum(m^2 / ...):
            # XLA's CPU loop for sum(u * m) is 1.8 times slower (measured).
            dots.append(tf.reduce_sum(tf.square(m) / (tf.sqrt(s) + epsilon)))
        return dots

    if not jit_compile:
        return compute
    return _cached(
        ("dots", rule.direction_estimator, rule.gradient_estimator),
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
            tf.cast(dot_factor * _scale_product(corrections(cdtype)) * _sum(d), dtype)
            for cdtype, d in dots_by_dtype.items()
        ]
    )


def _update_fits(rule, grads, directions, dots, dot_factor, direction_scale):
    """Whether every ``direction_scale * u_i`` element fits its variable's dtype.

    Checks a bound on the largest element, ``||u_i||``, or the analytic
    `direction_bound` where there is one: once per variable dtype.
    """
    u_bound = l4_rule.direction_bound(rule.direction_estimator)
    same_estimate = rule.direction_estimator == rule.gradient_estimator
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


def select_taken(step: Step, emas) -> Step:
    """``step`` with the skip done by selection instead of by branching.

    For graphs that cannot branch around assignments (ref variables under
    control flow v2), and where it is cheaper (`selection_is_cheaper`): every
    assignment of the result can run unconditionally, and a skipped step
    writes back the values it read. ``emas`` are the EMAs before the step.
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
        emas=[
            [keep(new, old) for new, old in zip(new_emas, old_emas)]
            for new_emas, old_emas in zip(step.emas, emas)
        ],
        state=State(*(keep(n, o) for n, o in zip(step.state, step.skipped_state))),
    )


# -- TensorFlow's fused kernels ----------------------------------------


def tf_variable(var):
    """The tf.Variable of a ref, resource or Keras variable."""
    # A Keras variable wraps a tf.Variable.
    return var if isinstance(var, tf.Variable) else var.value


def apply_descent(var, alpha, delta, use_locking=False):
    """``var -= alpha * delta``; ``var`` is a ref, resource or Keras variable."""
    var = tf_variable(var)
    dtype = var.dtype.base_dtype
    if dtype in (tf.float16, tf.bfloat16):
        # alpha alone may not fit a half type when alpha * delta does.
        alpha, delta = (
            tf.ones([], dtype),
            tf.cast(tf.cast(alpha, delta.dtype) * delta, dtype),
        )
    else:
        alpha, delta = tf.cast(alpha, dtype), tf.cast(delta, dtype)
    if hasattr(var, "handle"):
        return tf.raw_ops.ResourceApplyGradientDescent(
            var=var.handle, alpha=alpha, delta=delta, use_locking=use_locking
        )
    return tf.raw_ops.ApplyGradientDescent(
        var=var, alpha=alpha, delta=delta, use_locking=use_locking
    ).op


def apply_adam(var, m, v, grad, kernel: AdamKernel, use_locking=False):
    """TensorFlow's Adam kernel on ``var`` and its EMAs ``m``, ``v`` (all of
    one dtype, that of ``grad`` and of ``kernel``'s scalars)."""
    var, m, v = (tf_variable(x) for x in (var, m, v))
    scalars = kernel._asdict()
    if hasattr(var, "handle"):
        return tf.raw_ops.ResourceApplyAdam(
            var=var.handle,
            m=m.handle,
            v=v.handle,
            grad=grad,
            use_locking=use_locking,
            **scalars,
        )
    return tf.raw_ops.ApplyAdam(
        var=var, m=m, v=v, grad=grad, use_locking=use_locking, **scalars
    ).op


def apply_update(step, i, var, slots, grad, assign, use_locking=False):
    """Applies variable ``i``'s part of the taken `Step` ``step``.

    ``slots`` are the variable's EMA variables in ``rule.layout`` order,
    ``grad`` its dense gradient, and ``assign(slot, value)`` the front end's
    way to write an EMA. Returns the ops (`None` entries in eager mode).
    """
    if step.kinds[i] == ADAM:
        m, v = slots
        kernel = step.adam_kernel[grad.dtype]
        return [apply_adam(var, m, v, grad, kernel, use_locking)]
    descent = apply_descent(var, step.direction_scale, step.directions[i], use_locking)
    after = (
        tf.control_dependencies([descent])
        if descent is not None
        else contextlib.nullcontext()
    )
    with after:
        # After the descent, which may read the same tensor (momentum's
        # direction is its EMA): the assignment can then take over its buffer.
        assigns = [assign(slot, ema) for slot, ema in zip(slots, step.emas[i])]
    return [descent, *assigns]
