"""Checks L4's hyperparameters (into an `L4.rule.Rule`) and its loss input.

Both front ends check here, so a bad argument gets the same error from
``L4.L4Adam`` and from ``L4.compat.L4Adam``.
"""

import inspect
import math
import numbers

import tensorflow as tf

from L4 import rule as l4_rule

# Defaults of the original TensorFlow release of Rolínek & Martius (NeurIPS 2018).
FRACTION = 0.15
MINLOSS_FACTOR = 0.9
INIT_FACTOR = 0.75
MINLOSS_FORGET_TIME = 1000.0
EPSILON = 1e-12


# The range of each stepsize hyperparameter: (low, high, low_open).
RANGES = {
    "fraction": (0.0, None, True),
    "minloss_factor": (0.0, 1.0, False),
    "init_factor": (0.0, 1.0, False),
    "minloss_forget_time": (0.0, None, True),
    "epsilon": (0.0, None, False),
}


def _range_text(low, high, low_open):
    left = "(" if low_open else "["
    return f"{left}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"


def check_number(name, value, low=None, high=None, low_open=False):
    """Returns ``value`` as a float if it is a finite real number in range.

    The range is ``[low, high]``, or ``(low, high]`` with ``low_open``.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
    ):
        raise ValueError(
            f"`{name}` must be a finite real number. Received: {name}={value!r}"
        )
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        raise ValueError(
            f"`{name}` must be in the range {_range_text(low, high, low_open)}. "
            f"Received: {name}={value!r}"
        )
    return value


def is_dynamic(value):
    """Whether ``value`` is a tensor, a variable or a callable (read at each step)."""
    return callable(value) or tf.is_tensor(value) or isinstance(value, tf.Variable)


def check_hyperparameter(name, value, dynamic=False):
    """A number in ``RANGES[name]`` as a float; with ``dynamic``, a tensor,
    variable or callable is returned as it is (see `read_hyperparameter`)."""
    if dynamic and is_dynamic(value):
        return value
    return check_number(name, value, *RANGES[name])


def read_hyperparameter(name, value):
    """This step's value of a hyperparameter: a float, or a scalar tensor that
    asserts ``RANGES[name]`` when it runs (as TensorFlow's v1 optimizers, a
    callable is called at each step)."""
    if not is_dynamic(value):
        return value
    if callable(value):
        value = value()
    value = tf.convert_to_tensor(value, name=name)
    if not (value.dtype.is_floating or value.dtype.is_integer):
        raise TypeError(
            f"`{name}` must be a real number or a real scalar tensor. "
            f"Received: {name}={value!r}"
        )
    if value.shape.num_elements() not in (1, None):
        raise ValueError(f"`{name}` must be a scalar. Received: {name}={value!r}")
    value = tf.reshape(value, [])
    low, high, low_open = RANGES[name]
    x = tf.cast(value, tf.float64)
    valid = tf.math.is_finite(x)
    if low is not None:
        valid &= x > low if low_open else x >= low
    if high is not None:
        valid &= x <= high
    message = (
        f"`{name}` must be in the range {_range_text(low, high, low_open)}. "
        f"Received: {name}="
    )
    with tf.control_dependencies([_assert(valid, [message, value])]):
        return tf.identity(value)


def make_estimator(arg_name, kind, params, params_name):
    """The `Estimator` named ``kind`` ('momentum' or 'adam') with ``params``."""
    if kind not in l4_rule.ESTIMATORS:
        raise ValueError(
            f"`{arg_name}` must be one of {sorted(l4_rule.ESTIMATORS)}. "
            f"Received: {arg_name}={kind!r}"
        )
    factory = l4_rule.ESTIMATORS[kind]
    params = dict(params or {})
    valid = list(inspect.signature(factory).parameters)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(
            f"Unknown parameters {unknown} in `{params_name}` for the {kind!r} "
            f"estimator; valid parameters are {valid}. "
            f"Received: {params_name}={params!r}"
        )
    for key, value in params.items():
        if key == "epsilon":
            check_number(f'{params_name}["{key}"]', value, low=0.0)
        else:
            # A time scale T gives the decay 1 - 1/T, which must lie in [0, 1).
            check_number(f'{params_name}["{key}"]', value, low=1.0)
    return factory(**{key: float(value) for key, value in params.items()})


# The arguments of every ``L4General`` that make its `L4.rule.Rule`, in the
# original order: each front end hands its constructor's to `make_rule`.
RULE_ARGUMENTS = (
    "minloss_factor",
    "init_factor",
    "minloss_forget_time",
    "epsilon",
    "gradient_estimator",
    "gradient_params",
    "direction_estimator",
    "direction_params",
    "loss_lower_bound",
    "max_effective_learning_rate",
)


def rule_arguments(arguments):
    """The entries of ``arguments`` (a constructor's ``locals()``) that
    `make_rule` takes."""
    return {name: arguments[name] for name in RULE_ARGUMENTS}


def make_rule(
    minloss_factor,
    init_factor,
    minloss_forget_time,
    epsilon,
    gradient_estimator,
    gradient_params,
    direction_estimator,
    direction_params,
    loss_lower_bound=0.0,
    max_effective_learning_rate=None,
    dynamic=False,
):
    """Checks the arguments of ``L4General`` (all but ``fraction``).

    With ``dynamic``, the stepsize hyperparameters (gamma, gamma0, tau, eps) may
    be tensors, variables or callables, read at each step by `read_hyperparameter`.
    """
    if max_effective_learning_rate is not None:
        max_effective_learning_rate = check_number(
            "max_effective_learning_rate",
            max_effective_learning_rate,
            low=0.0,
            low_open=True,
        )
    return l4_rule.Rule(
        minloss_factor=check_hyperparameter("minloss_factor", minloss_factor, dynamic),
        init_factor=check_hyperparameter("init_factor", init_factor, dynamic),
        minloss_forget_time=check_hyperparameter(
            "minloss_forget_time", minloss_forget_time, dynamic
        ),
        epsilon=check_hyperparameter("epsilon", epsilon, dynamic),
        direction_estimator=make_estimator(
            "direction_estimator",
            direction_estimator,
            direction_params,
            "direction_params",
        ),
        gradient_estimator=make_estimator(
            "gradient_estimator", gradient_estimator, gradient_params, "gradient_params"
        ),
        loss_lower_bound=check_number("loss_lower_bound", loss_lower_bound),
        max_effective_learning_rate=max_effective_learning_rate,
    )


def check_callable(name, value):
    """``value``, which must be `None` or callable."""
    if value is not None and not callable(value):
        raise TypeError(
            f"`{name}` must be callable or None. Received: {name}={value!r}"
        )
    return value


def check_bool(name, value):
    """``value``, which must be `True` or `False`."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False. Received: {name}={value!r}")
    return value


def check_fraction(fraction, dynamic=False):
    """alpha must be a positive, finite number (or, with ``dynamic``, a tensor,
    variable or callable)."""
    return check_hyperparameter("fraction", fraction, dynamic)


def read_rule(rule):
    """``rule`` with this step's values of its dynamic hyperparameters."""
    names = ("minloss_factor", "init_factor", "minloss_forget_time", "epsilon")
    return rule._replace(
        **{name: read_hyperparameter(name, getattr(rule, name)) for name in names}
    )


def check_loss(loss, how_to_pass, lower_bound=0.0):
    """``loss`` as a scalar tensor, checked against ``lower_bound`` when it runs.

    ``how_to_pass`` completes the error raised without a loss. A finite loss
    below ``lower_bound`` raises ``InvalidArgumentError`` when the step runs
    (under XLA, which drops assertions, the step is skipped instead).
    """
    if loss is None:
        raise ValueError(
            "L4 sets its stepsize from the current loss, and no loss is known "
            "for this step. " + how_to_pass
        )
    loss = tf.convert_to_tensor(loss)
    if not loss.dtype.is_floating:
        raise TypeError(
            f"`loss` must be a floating-point scalar. Received: loss={loss!r}"
        )
    if loss.shape.num_elements() not in (1, None):
        raise ValueError(
            "`loss` must be a scalar (reduce it, e.g. with tf.reduce_mean). "
            f"Received: loss={loss!r}"
        )
    if not tf.executing_eagerly() and not _visible_from(
        loss.graph, tf.compat.v1.get_default_graph()
    ):
        raise ValueError(
            "The loss belongs to another graph than this training step. " + how_to_pass
        )
    loss = tf.reshape(loss, [])
    # A non-finite loss is not an error: the step is skipped.
    plausible = (loss >= lower_bound) | tf.logical_not(tf.math.is_finite(loss))
    message = (
        f"L4 assumes the loss never goes below loss_lower_bound={lower_bound!r}, "
        "and this step's loss does. For a loss that can be negative, declare the "
        "lowest value it can take: e.g. L4Adam(loss_lower_bound=-1.0). Loss:"
    )
    with tf.control_dependencies([_assert(plausible, [message, loss])]):
        return tf.identity(loss)


def _visible_from(graph, current):
    """Whether a tensor of ``graph`` can be used in ``current`` (or its inner functions)."""
    while current is not None:
        if current is graph:
            return True
        current = getattr(current, "outer_graph", None)
    return False


def _assert(condition, data):
    # The raw op: tf.debugging.Assert guards it with a conditional, which costs
    # one more op (a function call) at every step of a graph.
    return tf.raw_ops.Assert(condition=condition, data=data)


def preset_init(base, direction, params_name):
    """The ``__init__`` of a preset of ``base`` (an ``L4General`` class):
    ``L4Adam`` (``direction='adam'``, ``adam_params``) or ``L4Mom``
    (``'momentum'``, ``mom_params``), both with a momentum gradient estimate.

    Its signature is the original release's: ``base``'s first five arguments
    (``fraction`` to ``epsilon``), then ``params_name`` (the direction's
    parameters), then ``base``'s keyword-only options. Each front end then
    checks, documents and serializes its arguments in one place: ``base``.
    """
    parameters = list(inspect.signature(base.__init__).parameters.values())
    signature = inspect.Signature(
        parameters[:6]  # self, fraction, ..., epsilon
        + [
            inspect.Parameter(
                params_name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None
            )
        ]
        + [p for p in parameters if p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD)]
    )
    var_keyword = [p.name for p in parameters if p.kind is p.VAR_KEYWORD]

    def __init__(self, *args, **kwargs):
        arguments = signature.bind(self, *args, **kwargs).arguments
        del arguments["self"]
        extra = arguments.pop(var_keyword[0], {}) if var_keyword else {}
        params = arguments.pop(params_name, None)
        base.__init__(
            self,
            **arguments,
            **extra,
            gradient_estimator="momentum",
            direction_estimator=direction,
            direction_params=params,
        )
        # What `get_config` writes for the estimators: the preset's argument.
        self._estimator_config = {params_name: params}

    __init__.__signature__ = signature
    return __init__
