"""L4 as Keras 2 optimizers: ``tf.keras`` on TensorFlow 2.12 to 2.15, and
``tf_keras`` on 2.16 and later with ``TF_USE_LEGACY_KERAS=1``.

The same classes, arguments and rule as the Keras 3 ones (`L4.compat.optimizers`);
Keras 2's trainer calls ``optimizer.minimize(loss, variables, tape=tape)``,
so `compute_gradients` remembers the loss for the step.
"""

import tensorflow as tf

from L4 import config as l4_config
from L4 import distribute, loss_scaling, step_driver
from L4 import rule as l4_rule
from L4.compat import keras_step

keras = tf.keras  # Keras 2 here: TensorFlow's rule chose it (see L4.compat)


def _assign(variable, value):
    variable.assign(tf.cast(value, variable.dtype))


@keras.utils.register_keras_serializable(package="L4")
class L4General(step_driver.StateProperties, keras.optimizers.Optimizer):
    """L4 stepsize adaptation, as a Keras 2 optimizer.

    At each step, with loss ``L``, the update direction ``v`` and the gradient
    estimate ``g`` (bias-corrected EMAs of the gradient):

        L_min = gamma0 * L at the first step, else min(L_min, L)
        eta   = alpha * (L - gamma * L_min) / (<v, g> + epsilon)
        theta <- theta - eta * v
        L_min <- (1 + 1/tau) * L_min

    ``model.fit`` hands each batch's loss to the optimizer through `minimize`;
    custom loops pass it to `apply_gradients` as ``loss=``. The arguments are
    those of the Keras 3 ``L4.compat.L4General``; ``fraction`` is Keras'
    learning rate, and the name defaults to the class name, as Keras 2's own
    optimizers'. Under a `tf.distribute` strategy it behaves as the Keras 3
    one: the replicas' shares of the loss are summed, one step for all.
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
        super().__init__(name=name or type(self).__name__, **kwargs)
        loss_scaling.install(loss_scaling.KERAS2)
        self._learning_rate = self._build_learning_rate(fraction)
        self._rule = rule
        self._layout = rule.layout
        self._estimator_config = estimators
        self._reduce_loss = l4_config.check_callable("reduce_loss", reduce_loss)
        self._remembered_loss = distribute.ReplicaLocal()
        self._unscaled_loss = distribute.ReplicaLocal()
        self._step = self._min_loss = self._effective_lr = self._skipped = None

    # -- The loss ----------------------------------------------------------

    def compute_gradients(self, loss, var_list, tape=None):
        """As Keras 2's; remembers ``loss`` (its value, if callable) for the step."""
        if callable(loss):
            values = []

            def loss_fn():
                values.append(loss())
                return values[-1]

            grads_and_vars = super().compute_gradients(loss_fn, var_list, tape)
            loss = values[-1]
        else:
            grads_and_vars = super().compute_gradients(loss, var_list, tape)
        # Under a LossScaleOptimizer, ``loss`` is scaled; the wrapper handed
        # over the true one (see L4.loss_scaling).
        unscaled = self._unscaled_loss.take()
        self._remembered_loss.put(loss if unscaled is None else unscaled)
        return grads_and_vars

    def _receive_unscaled_loss(self, loss):
        self._unscaled_loss.put(loss)

    def apply_gradients(self, grads_and_vars, name=None, loss=None, **kwargs):
        """Applies one L4 step. ``loss`` is this step's loss (a scalar)."""
        if loss is not None:
            self._remembered_loss.put(loss)
        return super().apply_gradients(grads_and_vars, name=name, **kwargs)

    # -- State ---------------------------------------------------------------

    def build(self, var_list):
        super().build(var_list)
        if getattr(self, "_built", False):
            return
        self._built = True
        dtype = l4_rule.scalar_dtype(tf.float32, [v.dtype for v in var_list])
        self._step = self.add_variable((), tf.int64, name="l4_step")
        self._skipped = self.add_variable((), tf.int64, name="skipped_steps")
        self._min_loss = self.add_variable((), dtype, name="min_loss")
        self._effective_lr = self.add_variable(
            (), dtype, name="effective_learning_rate"
        )
        # EMAs of half-precision variables are float32, so not "from reference".
        # "_moments": the attribute Keras tracks in checkpoints since 1.0.
        self._moments = [
            [
                self.add_variable(
                    var.shape,
                    l4_rule.compute_dtype(var.dtype),
                    name=f"{slot}/{var._shared_name}",
                )
                for slot in self._layout.names
            ]
            for var in var_list
        ]

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

    def _internal_apply_gradients(self, grads_and_vars):
        # L4's stepsize needs every gradient at once: the whole step here,
        # instead of variable by variable in `update_step`.
        # Keras 2's `apply_gradients` summed the gradients over the replicas
        # of a strategy, if any.
        loss = keras_step.take_loss(
            self._remembered_loss, self._reduce_loss, self._rule
        )
        grads, variables = zip(*grads_and_vars)
        ema_variables = [
            self._moments[self._index_dict[self._var_key(v)]] for v in variables
        ]
        keras_step.apply_step(
            self._rule,
            self._state_variables,
            grads,
            variables,
            ema_variables,
            self.learning_rate,
            loss,
            _assign,
        )
        return distribute.merge(lambda: self._after_step(variables))

    def _after_step(self, variables):
        # In the cross-replica context, as Keras 2 updates its averages.
        if self.use_ema:
            self._update_model_variables_moving_average(variables)
            if self.ema_overwrite_frequency:
                overwrite = (self.iterations + 1) % self.ema_overwrite_frequency == 0
                tf.cond(
                    overwrite,
                    lambda: self._overwrite_model_variables_with_average_value(
                        variables
                    ),
                    lambda: None,
                )
        return self.iterations.assign_add(1)

    def update_step(self, gradient, variable):
        raise NotImplementedError(
            "L4 updates all variables at once; see _internal_apply_gradients"
        )

    # -- Serialization -------------------------------------------------------

    def get_config(self):
        cfg = super().get_config()
        cfg.pop("weight_decay", None)
        cfg["fraction"] = self._serialize_hyperparameter(self._learning_rate)
        cfg.update(keras_step.rule_config(self._rule, self._estimator_config))
        return cfg

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if isinstance(config.get("fraction"), dict):
            config["fraction"] = keras.optimizers.schedules.deserialize(
                config["fraction"], custom_objects=custom_objects
            )
        return cls(**config)


@keras.utils.register_keras_serializable(package="L4")
class L4Adam(L4General):
    """L4 on Adam's direction, with a momentum gradient estimate, for Keras 2.

    See `L4General`; ``adam_params`` takes ``time_scale_grad`` (10.0),
    ``time_scale_var`` (1000.0) and ``epsilon`` (eps_a, 1e-4).

    Example:

    >>> import tensorflow as tf, L4.compat
    >>> model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(1)])
    >>> model.compile(optimizer=L4.compat.L4Adam(fraction=0.2), loss="mse")
    """

    __init__ = l4_config.preset_init(L4General, "adam", "adam_params")


@keras.utils.register_keras_serializable(package="L4")
class L4Mom(L4General):
    """L4 on momentum SGD, for Keras 2. See `L4General`; ``mom_params`` takes
    ``time_momentum`` (10.0) for the direction."""

    __init__ = l4_config.preset_init(L4General, "momentum", "mom_params")


class LogL4(keras_step.LogL4Mixin, keras.callbacks.Callback):
    """Adds L4's last ``effective_learning_rate`` and ``min_loss`` to ``fit``'s logs."""
