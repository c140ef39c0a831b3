"""L4 as ``tf.compat.v1.train.Optimizer``: Sessions, tf-slim, eager, tf.function.

The classes keep L4's state in variables (EMAs in slots; t, L_min and the last
eta in non-slot variables, one set per graph) and compute each step with
`L4.rule.l4_step`.
"""

import numpy as np
import tensorflow as tf

from L4 import config, distribute, execution, loss_scaling, loss_tracking, step_driver
from L4 import rule as l4_rule

_STEP = "l4_step"
_SKIPPED = "skipped_steps"
_MIN_LOSS = "min_loss"
_EFFECTIVE_LR = "effective_learning_rate"
# In `L4.step_driver.StateVariables` order.
_STATE_NAMES = (_STEP, _SKIPPED, _MIN_LOSS, _EFFECTIVE_LR)

_HOW_TO_PASS_LOSS = (
    "Pass it: `opt.apply_gradients(grads_and_vars, loss=loss)`, or get the "
    "gradients from `opt.compute_gradients(loss)` or `opt.minimize(loss)` on "
    "this optimizer, which remember the loss for the next `apply_gradients`. "
    "With Keras' `model.fit`, use the `L4.compat` optimizers, which Keras hands "
    "each batch's loss."
)


class L4General(step_driver.StateProperties, tf.compat.v1.train.Optimizer):
    """L4 stepsize adaptation on top of a gradient-based direction.

    At each step, with loss ``L``, the update direction ``v`` and the gradient
    estimate ``g`` (bias-corrected EMAs of the gradient):

        L_min = gamma0 * L at the first step, else min(L_min, L)
        eta   = alpha * (L - gamma * L_min) / (<v, g> + epsilon)
        theta <- theta - eta * v
        L_min <- (1 + 1/tau) * L_min

    L4 needs the loss: `minimize` and `compute_gradients` remember it for the
    next `apply_gradients`, which also accepts it as ``loss=`` or, as in the
    first release, as its second positional argument.

    A step whose loss, ``<v, g>`` or eta is not finite (NaN, Inf) is skipped:
    variables, slots, L_min and t stay as they were, eta reads 0 and
    `skipped_steps` counts it.

    Inside ``strategy.run`` of a `tf.distribute` strategy, each replica's loss
    is its share of the batch's (scaled as its gradients are); the shares and
    the gradients are summed over the replicas, and every replica takes the
    same step (see `L4.distribute`). With Horovod, pass ``reduce_loss``.

    In graph mode, when no ``global_step`` is passed, the graph's global step
    is created if needed and incremented, as the original release did (where
    the graph holds something under that name that is not an integer
    variable, it is left alone). L4's own step count ``t`` (bias correction,
    the first L_min) is a separate variable, so a restored or shared global
    step does not disturb it. A variable's ``constraint`` is applied after
    its update.

    ``fraction``, ``minloss_factor``, ``init_factor``, ``minloss_forget_time``
    and ``epsilon`` may be Python numbers (checked here), scalar tensors or
    variables (a placeholder, a decay op; checked when the step runs), or
    callables returning one (called at each step), as the learning rate of
    TensorFlow's optimizers.

    Args:
        fraction: alpha in the paper, the fraction of the "optimal" stepsize
            taken. Good values lie in [0.1, 0.3]. Defaults to `0.15`.
        minloss_factor: gamma, the fraction of the minimum loss L4 aims at.
            Defaults to `0.9`.
        init_factor: gamma0, the first estimate of the minimum loss as a
            fraction of the first loss. Defaults to `0.75`.
        minloss_forget_time: tau, the time scale (in steps) over which the
            minimum-loss estimate is forgotten. Defaults to `1000.0`.
        epsilon: eps, keeps the stepsize finite when ``<v, g>`` vanishes.
            Defaults to `1e-12`.
        gradient_estimator: how ``g`` is estimated, `'momentum'` or `'adam'`.
            Defaults to `'momentum'`.
        gradient_params: parameters of ``gradient_estimator``: `momentum` takes
            ``time_momentum`` (10.0); `adam` takes ``time_scale_grad`` (10.0),
            ``time_scale_var`` (1000.0) and ``epsilon`` (1e-4). Defaults to
            `None` (the estimator's defaults).
        direction_estimator: how ``v`` is computed, `'momentum'` or `'adam'`.
            Defaults to `'adam'`.
        direction_params: parameters of ``direction_estimator``, as above.
            Defaults to `None`.
        loss_lower_bound: the lowest value the loss can take; L4 works on
            ``L - loss_lower_bound``. The paper's rule assumes 0; declare it for
            losses that can be negative. A step whose loss is below it raises
            ``InvalidArgumentError``. Keyword-only. Defaults to `0.0`.
        max_effective_learning_rate: a cap on eta, for runs that diverge.
            Keyword-only. Defaults to `None` (no cap, as in the paper).
        reduce_loss: a callable that maps this process' loss to the loss of
            the whole batch across processes, for data-parallel training
            outside `tf.distribute`: with Horovod, ``hvd.allreduce`` (the mean,
            as Horovod averages the gradients). Keyword-only. Defaults to
            `None`. (Under a `tf.distribute` strategy L4 sums the replicas'
            losses itself.)
        carry_loss: if `True`, `compute_gradients` returns the loss in the
            list, as the "gradient" of a scalar variable of L4's own, and
            `apply_gradients` takes it from there: code that averages towers,
            sums clones, divides by a manual loss scale or aggregates workers
            (``SyncReplicasOptimizer``) between the two then does the same to
            the loss. Code that clips gradients must leave that pair alone.
            No effect under a `tf.distribute` strategy, where L4 sums the
            replicas' losses itself. Keyword-only. Defaults to `False` (the
            loss is remembered, and checked against the gradients given).
        use_locking: if `True`, use locks for the update operations.
            Keyword-only. Defaults to `False`.
        name: prefix of the operations and slot variables. Defaults to the
            class name.

    References:
        M. Rolínek, G. Martius. "L4: Practical loss-based stepsize adaptation
        for deep learning". NeurIPS 2018. https://arxiv.org/abs/1802.05074

    Example:

    >>> import tensorflow as tf, L4
    >>> w = tf.Variable([1.0, -2.0])
    >>> opt = L4.L4General(direction_estimator='momentum')
    >>> _ = opt.minimize(lambda: tf.reduce_sum(w ** 2), var_list=[w])
    """

    # The original release's signature. Each front end's L4General repeats it
    # (each extends its own optimizer class: tf.compat.v1's, Keras 3's, Keras
    # 2's, with their own options); the checks behind it are shared
    # (`L4.config`), and L4Adam / L4Mom are presets (`config.preset_init`).
    def __init__(
        self,
        fraction=config.FRACTION,
        minloss_factor=config.MINLOSS_FACTOR,
        init_factor=config.INIT_FACTOR,
        minloss_forget_time=config.MINLOSS_FORGET_TIME,
        epsilon=config.EPSILON,
        gradient_estimator="momentum",
        gradient_params=None,
        direction_estimator="adam",
        direction_params=None,
        *,
        loss_lower_bound=0.0,
        max_effective_learning_rate=None,
        reduce_loss=None,
        carry_loss=False,
        use_locking=False,
        name=None,
    ):
        super().__init__(use_locking, name or type(self).__name__)
        loss_scaling.install(loss_scaling.V1)
        self._fraction = config.check_fraction(fraction, dynamic=True)
        self._rule = config.make_rule(**config.rule_arguments(locals()), dynamic=True)
        self._layout = self._rule.layout
        self._reduce_loss = config.check_callable("reduce_loss", reduce_loss)
        self._carrier = (
            loss_tracking.LossCarrier(self._name)
            if config.check_bool("carry_loss", carry_loss)
            else None
        )
        self._remembered = distribute.ReplicaLocal()
        self._unscaled_loss = distribute.ReplicaLocal()

    # -- The loss ----------------------------------------------------------

    def compute_gradients(
        self,
        loss,
        var_list=None,
        gate_gradients=tf.compat.v1.train.Optimizer.GATE_OP,
        aggregation_method=None,
        colocate_gradients_with_ops=False,
        grad_loss=None,
    ):
        """As `tf.compat.v1.train.Optimizer.compute_gradients`; remembers ``loss``.

        The next `apply_gradients` uses the remembered loss (the value ``loss()``
        returned, when ``loss`` is callable) unless it is given one. With
        ``carry_loss=True`` the loss is returned in the list instead, as the
        "gradient" of a variable of L4's own (see `L4.loss_tracking`).
        """
        returned = []  # the value a callable ``loss`` returned
        differentiated = loss
        if callable(loss):

            def differentiated():
                returned.append(loss())
                return returned[-1]

        grads_and_vars = super().compute_gradients(
            differentiated,
            var_list,
            gate_gradients,
            aggregation_method,
            colocate_gradients_with_ops,
            grad_loss,
        )
        if returned:
            loss = returned[-1]
        # Under a loss-scale wrapper, ``loss`` is scaled; the wrapper handed
        # over the true one (see L4.loss_scaling).
        unscaled = self._unscaled_loss.take()
        strategy = tf.distribute.has_strategy()
        if self._carrier is not None and not strategy:
            # The loss as differentiated, loss scale included: whatever
            # rescales or combines the gradients does the same to it.
            return list(grads_and_vars) + [self._carrier.pair(loss)]
        loss = loss if unscaled is None else unscaled
        if strategy:
            # Scaled as TensorFlow scaled it for the gradients, so that the
            # replicas' shares sum to the loss of the whole batch.
            loss = self._scale_loss(loss)
        remembered = self._remembered.get() or loss_tracking.Remembered()
        remembered.add(loss, [g for g, _ in grads_and_vars], unscaled is not None)
        self._remembered.put(remembered)
        return grads_and_vars

    def _receive_unscaled_loss(self, loss):
        self._unscaled_loss.put(loss)

    def _take_loss(self, loss, grads_and_vars):
        """The loss of the whole batch for this step, and the other pairs.

        The loss given, else the one carried in ``grads_and_vars``, else the
        remembered one (checked against ``grads_and_vars``); then summed over
        replicas or processes (see `L4.distribute.global_loss`).
        """
        remembered = self._remembered.take()
        if self._carrier is not None:
            carried, grads_and_vars = self._carrier.split(grads_and_vars)
            loss = carried if loss is None else loss
        if loss is None and remembered is not None:
            loss = remembered.loss_for([g for g, _ in grads_and_vars])
        loss = distribute.global_loss(loss, self._reduce_loss)
        loss = config.check_loss(loss, _HOW_TO_PASS_LOSS, self._rule.loss_lower_bound)
        return loss, grads_and_vars

    # -- State ---------------------------------------------------------------

    def _create_slots(self, var_list):
        for var in var_list:
            dtype = l4_rule.compute_dtype(var.dtype.base_dtype)
            for slot_name in self._layout.names:
                self._get_or_make_slot_with_initializer(
                    var,
                    tf.compat.v1.zeros_initializer(),
                    var.shape,
                    dtype,
                    slot_name,
                    self._name,
                )

    def _create_state(self, var_list, dtype):
        first_var = min(var_list, key=lambda v: v.name)
        self._create_non_slot_variable(np.int64(0), _STEP, first_var)
        self._create_non_slot_variable(np.int64(0), _SKIPPED, first_var)
        zero = np.array(0.0, dtype.as_numpy_dtype)
        self._create_non_slot_variable(zero, _MIN_LOSS, first_var)
        self._create_non_slot_variable(zero, _EFFECTIVE_LR, first_var)

    def _trackable_children(self, *args, **kwargs):
        children = super()._trackable_children(*args, **kwargs)
        if tf.executing_eagerly():
            # One graph in eager code. TensorFlow 2.12 (fixed by 2.15)
            # also compares the graph keys of the non-slot variables here,
            # and leaves out those created under a strategy.
            for (name, _), variable in self._non_slot_dict.items():
                children.setdefault(name, variable)
        return children

    @property
    def _state_variables(self):
        return step_driver.StateVariables(
            *(self._state_variable(name) for name in _STATE_NAMES)
        )

    def _state_variable(self, name):
        with tf.init_scope():
            graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
            return self._get_non_slot_variable(name, graph=graph)

    # -- The step ------------------------------------------------------------

    def apply_gradients(
        self,
        grads_and_vars,
        *args,
        loss=None,
        global_step=None,
        name=None,
        skip_gradients_aggregation=False,
    ):
        """Applies one L4 step; see the class docstring.

        Accepts both calling forms of the original releases:
        ``apply_gradients(grads_and_vars, loss, global_step=None, name=None)``
        (the first) and ``apply_gradients(grads_and_vars, global_step=None,
        name=None, skip_gradients_aggregation=False)`` (the latest, TensorFlow's
        own, and every wrapper's), told apart by whether the second positional
        argument is floating point (a loss) or an integer (a global step).

        Under a `tf.distribute` strategy, ``skip_gradients_aggregation=True``
        says, as for TensorFlow's optimizers, that the gradients are summed
        over the replicas already; the replicas' losses are still summed.

        Returns:
            An operation that applies the update and increments ``global_step``
            (`None` in eager mode).
        """
        loss, global_step, name, skip_gradients_aggregation = _split_positional(
            args, loss, global_step, name, skip_gradients_aggregation
        )
        loss, grads_and_vars = self._take_loss(loss, grads_and_vars)
        pairs = _dense_gradients(grads_and_vars)
        variables = [v for _, v in pairs]
        dtype = l4_rule.scalar_dtype(
            loss.dtype, [v.dtype.base_dtype for v in variables]
        )
        # Under a strategy: the gradients summed over the replicas, as
        # TensorFlow's optimizers sum them, then one step for all of them.
        grads = [g for g, _ in pairs]
        if not skip_gradients_aggregation:
            grads = distribute.sum_over_replicas(grads)
        return distribute.merge(
            lambda grads, loss: self._apply(
                list(zip(grads, variables)), loss, dtype, global_step, name
            ),
            grads,
            loss,
        )

    def _apply(self, pairs, loss, dtype, global_step, name):
        var_list = [v for _, v in pairs]
        with tf.init_scope(), tf.distribute.get_strategy().scope():
            self._create_slots(var_list)
            self._create_state(var_list, dtype)
        graph_mode = not tf.compat.v1.executing_eagerly_outside_functions()
        if global_step is None and graph_mode:
            global_step = _graph_global_step()

        with tf.compat.v1.name_scope(name, self._name) as scope:
            train_op = distribute.on_each_device(
                lambda grads, loss: self._apply_step(
                    loss, list(zip(grads, var_list)), graph_mode
                ),
                self._state_variable(_STEP),
                [g for g, _ in pairs],
                loss,
            )
            if global_step is not None:
                with tf.control_dependencies([train_op]):
                    one = tf.constant(1, global_step.dtype.base_dtype)
                    train_op = global_step.assign_add(one, read_value=False)
            train_op = tf.group(train_op, name=scope)
        if graph_mode:
            # The original release's summaries (they need no TensorBoard), read
            # from the state: whatever runs them (`merge_all`) must not run
            # the step's gradients or loss, which may be the workers'
            # accumulated gradients under SyncReplicasOptimizer.
            with tf.compat.v1.name_scope(self._name + "/"):
                tf.compat.v1.summary.scalar(
                    _EFFECTIVE_LR, self._state_variable(_EFFECTIVE_LR).read_value()
                )
                tf.compat.v1.summary.scalar(
                    "min_loss_estimate", self._state_variable(_MIN_LOSS).read_value()
                )
            train_ops = tf.compat.v1.get_collection_ref(tf.compat.v1.GraphKeys.TRAIN_OP)
            if train_op not in train_ops:
                train_ops.append(train_op)
        return train_op

    def _apply_step(self, loss, pairs, graph_mode):
        lock = self._use_locking
        # Control flow v2 cannot assign ref variables in a branch: there the
        # step takes every write, by selection, without fused kernels.
        select = (
            graph_mode
            and _has_ref_variables(pairs)
            and tf.compat.v1.control_flow_v2_enabled()
        )
        done = step_driver.run_step(
            config.read_rule(self._rule),
            config.read_hyperparameter("fraction", self._fraction),
            loss,
            pairs,
            [[self.get_slot(v, n) for n in self._layout.names] for _, v in pairs],
            self._state_variables,
            lambda var, value: var.assign(value, use_locking=lock, read_value=False),
            use_locking=lock,
            select=select,
            apply_constraints=True,
        )
        return tf.group(done)


class L4Adam(L4General):
    """L4 on Adam's direction, with a momentum gradient estimate.

    The direction ``v = m_hat / (sqrt(s_hat) + eps_a)`` is Adam's; the gradient
    estimate ``g = m_hat`` is Adam's own first moment with the defaults, kept in
    one slot, so L4Adam keeps two slots per variable, as Adam does.

    Args:
        fraction, minloss_factor, init_factor, minloss_forget_time, epsilon:
            as in `L4General`.
        adam_params: parameters of the Adam direction: ``time_scale_grad``
            (10.0), ``time_scale_var`` (1000.0) and ``epsilon`` (eps_a, 1e-4).
            Defaults to `None` (those defaults).
        loss_lower_bound, max_effective_learning_rate, reduce_loss, carry_loss,
            use_locking, name: keyword-only, as in `L4General`.

    Example:

    >>> import tensorflow as tf, L4
    >>> w = tf.Variable([1.0, -2.0])
    >>> opt = L4.L4Adam(fraction=0.2)
    >>> _ = opt.minimize(lambda: tf.reduce_sum(w ** 2), var_list=[w])
    """

    __init__ = config.preset_init(L4General, "adam", "adam_params")


class L4Mom(L4General):
    """L4 on momentum SGD: the direction and the gradient estimate are both ``m_hat``.

    With the defaults the two are one EMA, kept in one slot per variable, as
    momentum SGD does.

    Args:
        fraction, minloss_factor, init_factor, minloss_forget_time, epsilon:
            as in `L4General`.
        mom_params: parameters of the momentum direction: ``time_momentum``
            (10.0). Defaults to `None`. As in the original release, the
            gradient estimate keeps its default time scale.
        loss_lower_bound, max_effective_learning_rate, reduce_loss, carry_loss,
            use_locking, name: keyword-only, as in `L4General`.

    Example:

    >>> import tensorflow as tf, L4
    >>> w = tf.Variable([1.0, -2.0])
    >>> opt = L4.L4Mom()
    >>> _ = opt.minimize(lambda: tf.reduce_sum(w ** 2), var_list=[w])
    """

    __init__ = config.preset_init(L4General, "momentum", "mom_params")


def _graph_global_step():
    """The default graph's global step, created if it has none, as the original did.

    `None` where the graph holds something else under that name (a float or
    non-scalar variable, a tensor): TensorFlow's optimizers leave the global
    step alone unless given one, so L4 must not fail there either. An integer
    resource variable named ``global_step`` is used, although
    ``tf.compat.v1.train.get_global_step`` rejects it.
    """
    graph = tf.compat.v1.get_default_graph()
    found = graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_STEP) or [
        v
        for v in graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
        if v.op.name == "global_step"
    ]
    if not found:
        try:
            graph.as_graph_element("global_step:0")
        except (KeyError, ValueError):
            return tf.compat.v1.train.create_global_step(graph)
        found = [None]  # a tensor or an op, not a variable
    step = found[0]
    usable = (
        len(found) == 1
        and isinstance(step, tf.Variable)
        and step.dtype.base_dtype.is_integer
        and step.shape.num_elements() == 1
    )
    if usable:
        return step
    tf.get_logger().warning(
        "L4: the graph's `global_step` is not one integer variable (%r); it is "
        "not incremented. Pass `global_step=` to increment one.",
        step,
    )
    return None


def _has_ref_variables(pairs):
    return any(not hasattr(var, "handle") for _, var in pairs)


def _is_floating(value):
    if isinstance(value, bool):
        return False
    if isinstance(value, (float, np.floating)):
        return True
    dtype = getattr(value, "dtype", None)
    try:
        return dtype is not None and tf.as_dtype(dtype).base_dtype.is_floating
    except TypeError:
        return False


def _is_integer_tensor(value):
    dtype = getattr(value, "dtype", None)
    try:
        return dtype is not None and tf.as_dtype(dtype).base_dtype.is_integer
    except TypeError:
        return False


def _split_positional(args, loss, global_step, name, skip_aggregation):
    """Reads ``apply_gradients``' positional arguments after ``grads_and_vars``.

    ``(loss, global_step, name)`` when the first is floating point (the first
    release), ``(global_step, name, skip_gradients_aggregation)`` when it is an
    integer tensor or `None` (TensorFlow's own).
    """
    given = {
        "loss": loss,
        "global_step": global_step,
        "name": name,
        "skip_gradients_aggregation": skip_aggregation,
    }
    if not args:
        return tuple(given.values())
    first = args[0]
    if _is_floating(first):
        names = ("loss", "global_step", "name")
    elif first is None or _is_integer_tensor(first):
        names = ("global_step", "name", "skip_gradients_aggregation")
    else:
        raise TypeError(
            "The second positional argument of `apply_gradients` must be the "
            "loss (a floating-point scalar) or the global step (an integer "
            f"variable). Received: {first!r}"
        )
    if len(args) > len(names):
        raise TypeError(
            f"`apply_gradients(grads_and_vars, {', '.join(names)})` takes at "
            f"most {len(names)} more positional arguments. Received: {len(args)}"
        )
    for key, value in zip(names, args):
        if given[key] not in (None, False):
            raise TypeError(
                f"`apply_gradients` got multiple values for argument `{key}`"
            )
        given[key] = value
    return tuple(given.values())


def _dense_gradients(grads_and_vars):
    """The (gradient, variable) pairs that have a gradient, made dense."""
    grads_and_vars = tuple(grads_and_vars)
    if not grads_and_vars:
        raise ValueError("No variables provided.")
    for _, var in grads_and_vars:
        if isinstance(var, tf.Tensor):
            # TensorFlow's optimizers raise this too.
            raise NotImplementedError("Trying to update a Tensor ", var)
    pairs = [
        (execution.dense_gradient(g, v), v) for g, v in grads_and_vars if g is not None
    ]
    if not pairs:
        raise ValueError(
            "No gradients provided for any variable: "
            f"{[v.name for _, v in grads_and_vars]}."
        )
    return pairs
