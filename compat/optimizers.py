"""L4 as Keras 3 optimizers, for TF2 training loops and ``model.fit``.

The classes keep L4's state in Keras optimizer variables (EMAs per variable;
t, L_min and the last eta as scalars) and compute each step with
`L4.rule.l4_step`, as ``L4.L4General`` does in graph mode.
"""

import keras
import tensorflow as tf

from L4 import config as l4_config
from L4 import distribute, loss_scaling, step_driver
from L4 import rule as l4_rule
from L4.compat import keras_step


@keras.saving.register_keras_serializable(package="L4")
class L4General(step_driver.StateProperties, keras.optimizers.Optimizer):
    """L4 stepsize adaptation, as a Keras 3 optimizer.

    At each step, with loss ``L``, the update direction ``v`` and the gradient
    estimate ``g`` (bias-corrected EMAs of the gradient):

        L_min = gamma0 * L at the first step, else min(L_min, L)
        eta   = alpha * (L - gamma * L_min) / (<v, g> + epsilon)
        theta <- theta - eta * v
        L_min <- (1 + 1/tau) * L_min

    L4 needs each step's loss. ``model.fit`` hands it over through
    `scale_loss`, which Keras calls with the batch loss; custom loops pass it
    to `apply_gradients` or `apply` as ``loss=``.

    A step whose loss, ``<v, g>`` or eta is not finite (NaN, Inf) is skipped:
    variables, EMAs, L_min and t stay as they were, eta reads 0 and
    ``opt.skipped_steps`` counts it.

    Under a `tf.distribute` strategy, each replica's loss is its share of the
    batch's, as ``fit`` hands it over (Keras divides by the number of
    replicas); the shares are summed with the gradients, and every replica
    takes the same step (see `L4.distribute`). With Horovod, pass
    ``reduce_loss``.

    ``fraction`` is Keras' learning rate: ``opt.learning_rate`` reads and sets
    it, so ``ReduceLROnPlateau``, ``LearningRateScheduler`` and a
    ``LearningRateSchedule`` as ``fraction`` act on alpha. The last eta and
    L_min are in ``opt.effective_learning_rate`` and ``opt.min_loss``; the
    `L4.compat.LogL4` callback adds them to ``fit``'s logs.

    Args:
        fraction: alpha in the paper, the fraction of the "optimal" stepsize
            taken; a float, a ``keras.optimizers.schedules.LearningRateSchedule``
            or a callable. Defaults to `0.15`.
        minloss_factor: gamma, the fraction of the minimum loss L4 aims at.
            Defaults to `0.9`.
        init_factor: gamma0, the first estimate of the minimum loss as a
            fraction of the first loss. Defaults to `0.75`.
        minloss_forget_time: tau, the time scale (in steps) over which the
            minimum-loss estimate is forgotten. Defaults to `1000.0`.
        epsilon: eps, keeps the stepsize finite when ``<v, g>`` vanishes.
            Defaults to `1e-12`.
        gradient_estimator: `'momentum'` or `'adam'`. Defaults to `'momentum'`.
        gradient_params: its parameters (see ``L4.L4General``). Defaults to `None`.
        direction_estimator: `'momentum'` or `'adam'`. Defaults to `'adam'`.
        direction_params: its parameters. Defaults to `None`.
        loss_lower_bound: the lowest value the loss can take; L4 works on
            ``L - loss_lower_bound``. Declare it for losses that can be
            negative. A step whose loss is below it raises
            ``InvalidArgumentError`` (under XLA, which drops assertions, the
            step is skipped). Defaults to `0.0`.
        max_effective_learning_rate: a cap on eta, for runs that diverge.
            Defaults to `None` (no cap, as in the paper).
        reduce_loss: a callable that maps this process' loss to the loss of
            the whole batch across processes, for data-parallel training
            outside `tf.distribute` (Horovod: ``hvd.allreduce``). Not saved
            with the optimizer's config. Defaults to `None`. Under a
            `tf.distribute` strategy L4 sums the replicas' losses itself.
        name: the optimizer's name. Defaults to `None`: Keras names it as its
            own optimizers, from the class (``l4_adam``, ``l4_adam_1``, ...).
        **kwargs: Keras' common optimizer arguments (``clipnorm``,
            ``clipvalue``, ``global_clipnorm``, ``use_ema``,
            ``gradient_accumulation_steps``, ...). With
            ``gradient_accumulation_steps=k``, the step taken every k batches
            uses the mean loss of the k batches, as it uses their mean
            gradient (not under a `tf.distribute` strategy). ``weight_decay``
            is not supported: Keras would scale it by alpha.

    References:
        M. Rolínek, G. Martius. "L4: Practical loss-based stepsize adaptation
        for deep learning". NeurIPS 2018. https://arxiv.org/abs/1802.05074

    Example:

    >>> import keras, L4.compat
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer=L4.compat.L4General(), loss="mse")
    """

    # The original release's signature. Each front end's L4General repeats it
    # (each extends its own optimizer class: tf.compat.v1's, Keras 3's, Keras
    # 2's, with their own options); the checks behind it are shared
    # (`L4.config`), and L4Adam / L4Mom are presets (`config.preset_init`).
    def __init__(
        self,
        fraction=l4_config.FRACTION,
        minloss_factor=l4_config.MINLOSS_FACTOR,
        init_factor=l4_config.INIT_FACTOR,
        minloss_forget_time=l4_config.MINLOSS_FORGET_TIME,
        epsilon=l4_config.EPSILON,
        gradient_estimator="momentum",
        gradient_params=None,
        direction_estimator="adam",
        direction_params=None,
        *,
        loss_lower_bound=0.0,
        max_effective_learning_rate=None,
        reduce_loss=None,
        name=None,
        **kwargs,
    ):
        fraction, rule, estimators = keras_step.check_arguments(locals(), kwargs)
        # name=None: Keras names it as its own optimizers (l4_adam, l4_adam_1, ...).
        super().__init__(learning_rate=fraction, name=name, **kwargs)
        loss_scaling.install(loss_scaling.KERAS)
        self._rule = rule
        self._layout = rule.layout
        self._estimator_config = estimators
        self._reduce_loss = l4_config.check_callable("reduce_loss", reduce_loss)
        self._remembered_loss = distribute.ReplicaLocal()
        self._step_loss = distribute.ReplicaLocal()
        self._step = self._min_loss = self._effective_lr = self._skipped = None
        self._accumulated_loss = None

    # -- The loss ----------------------------------------------------------

    def scale_loss(self, loss):
        """Remembers ``loss`` for the next update; Keras' trainer calls this each step."""
        self._remembered_loss.put(loss)
        return super().scale_loss(loss)

    def _receive_unscaled_loss(self, loss):
        # From a LossScaleOptimizer around this one (see L4.loss_scaling).
        self._remembered_loss.put(loss)

    def apply_gradients(self, grads_and_vars, loss=None):
        """Applies one L4 step. ``loss`` is this step's loss (a scalar)."""
        if loss is not None:
            self._remembered_loss.put(loss)
        return super().apply_gradients(grads_and_vars)

    def apply(self, grads, trainable_variables=None, loss=None):
        """As `apply_gradients`, with gradients and variables in two lists."""
        if loss is not None:
            self._remembered_loss.put(loss)
        return super().apply(grads, trainable_variables)

    # -- State ---------------------------------------------------------------

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        dtype = l4_rule.scalar_dtype(tf.float32, [v.dtype for v in var_list]).name
        self._step = self.add_variable((), dtype="int64", name="l4_step")
        self._skipped = self.add_variable((), dtype="int64", name="skipped_steps")
        self._min_loss = self.add_variable((), dtype=dtype, name="min_loss")
        self._effective_lr = self.add_variable(
            (), dtype=dtype, name="effective_learning_rate"
        )
        if self.gradient_accumulation_steps:
            # The sum of the losses of the batches accumulated so far.
            self._accumulated_loss = self.add_variable(
                (), dtype=dtype, name="accumulated_loss"
            )
        # "_moments": the attribute Keras tracks in checkpoints since 1.0.
        self._moments = [
            [self._add_ema(var, slot) for slot in self._layout.names]
            for var in var_list
        ]

    def _add_ema(self, var, slot_name):
        prefix = getattr(var, "path", None) or var.name
        return self.add_variable(
            var.shape,
            dtype=l4_rule.compute_dtype(var.dtype).name,
            name=f"{prefix.replace('/', '_').replace(':', '_')}_{slot_name}",
        )

    @property
    def _state_variables(self):
        return step_driver.StateVariables(
            self._step, self._skipped, self._min_loss, self._effective_lr
        )

    @property
    def fraction(self):
        """alpha: the same as ``learning_rate``."""
        return self.learning_rate

    # -- The step ------------------------------------------------------------

    def _backend_apply_gradients(self, grads, trainable_variables):
        if self.gradient_accumulation_steps and tf.distribute.has_strategy():
            raise NotImplementedError(
                "L4.compat optimizers do not support `gradient_accumulation_steps` "
                "under a tf.distribute strategy."
            )
        # Taken on every batch: with gradient accumulation, the loss is
        # accumulated as the gradients are.
        self._step_loss.put(
            keras_step.take_loss(self._remembered_loss, self._reduce_loss, self._rule)
        )
        super()._backend_apply_gradients(grads, trainable_variables)

    def _backend_increment_gradient_accumulators(self, grads, acc_grads):
        super()._backend_increment_gradient_accumulators(grads, acc_grads)
        acc = self._accumulated_loss
        self.assign(acc, acc + tf.cast(self._step_loss.get(), acc.dtype))

    def _backend_reset_gradient_accumulators(self):
        super()._backend_reset_gradient_accumulators()
        self.assign(self._accumulated_loss, tf.zeros([], self._accumulated_loss.dtype))

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # L4's stepsize needs every gradient at once, so the whole step is
        # computed here instead of variable by variable in `update_step`.
        # Read, not taken: under gradient accumulation both branches of
        # Keras' conditional read it.
        loss = self._step_loss.get()
        if self.gradient_accumulation_steps:
            # The mean gradient of k batches belongs to their mean loss.
            acc = self._accumulated_loss
            loss = (acc + tf.cast(loss, acc.dtype)) / self.gradient_accumulation_steps
        ema_variables = [
            self._moments[self._get_variable_index(v)] for v in trainable_variables
        ]
        # Summed over the replicas of a strategy, as Keras sums them.
        grads = [
            g
            for g, _ in self._all_reduce_sum_gradients(zip(grads, trainable_variables))
        ]
        keras_step.apply_step(
            self._rule,
            self._state_variables,
            grads,
            trainable_variables,
            ema_variables,
            learning_rate,
            loss,
            self.assign,
        )

    def update_step(self, gradient, variable, learning_rate):
        raise NotImplementedError(
            "L4 updates all variables at once; see _backend_update_step"
        )

    # -- Serialization -------------------------------------------------------

    def get_config(self):
        cfg = super().get_config()
        cfg["fraction"] = cfg.pop("learning_rate")
        cfg.pop("weight_decay", None)
        cfg.update(keras_step.rule_config(self._rule, self._estimator_config))
        return cfg

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if isinstance(config.get("fraction"), dict):
            config["fraction"] = keras.saving.deserialize_keras_object(
                config["fraction"], custom_objects=custom_objects
            )
        return cls(**config)


@keras.saving.register_keras_serializable(package="L4")
class L4Adam(L4General):
    """L4 on Adam's direction, with a momentum gradient estimate, for Keras 3.

    Two EMAs per variable with the defaults, as Adam. See `L4General` for the
    rule and the arguments; ``adam_params`` takes ``time_scale_grad`` (10.0),
    ``time_scale_var`` (1000.0) and ``epsilon`` (eps_a, 1e-4).

    Example:

    >>> import keras, L4.compat
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer=L4.compat.L4Adam(fraction=0.2), loss="mse")
    """

    __init__ = l4_config.preset_init(L4General, "adam", "adam_params")


@keras.saving.register_keras_serializable(package="L4")
class L4Mom(L4General):
    """L4 on momentum SGD, for Keras 3: one EMA per variable with the defaults.

    See `L4General` for the rule and the arguments; ``mom_params`` takes
    ``time_momentum`` (10.0) for the direction.

    Example:

    >>> import keras, L4.compat
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer=L4.compat.L4Mom(), loss="mse")
    """

    __init__ = l4_config.preset_init(L4General, "momentum", "mom_params")


class LogL4(keras_step.LogL4Mixin, keras.callbacks.Callback):
    """Adds L4's last ``effective_learning_rate`` and ``min_loss`` to ``fit``'s logs.

    >>> model.fit(x, y, callbacks=[L4.compat.LogL4()])  # doctest: +SKIP
    >>> history.history["effective_learning_rate"]  # doctest: +SKIP
    """
