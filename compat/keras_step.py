"""What L4's Keras 3 and Keras 2 optimizers share: arguments, the step, the config.

Each front end keeps L4's state in its Keras' optimizer variables; this module
checks the arguments, runs one `L4.rule.l4_step` over all variables and writes
its result back, with the front end's own ``assign``.
"""

import tensorflow as tf

from L4 import config as l4_config
from L4 import distribute, execution, step_driver

HOW_TO_PASS_LOSS = (
    "In a custom training loop, pass it: "
    "`opt.apply_gradients(zip(grads, variables), loss=loss)`. "
    "`model.fit` passes it to the optimizer itself."
)


def check_arguments(arguments, kwargs):
    """Checks ``L4General``'s arguments (``arguments``: its ``locals()``);
    returns ``fraction``, the `Rule` and the estimator arguments to serialize.
    Removes ``weight_decay`` from ``kwargs``."""
    if kwargs.get("weight_decay") is not None:
        raise ValueError(
            "L4 does not support Keras' `weight_decay` (Keras would scale it "
            "by `fraction`); add a regularization loss instead. "
            f"Received: weight_decay={kwargs['weight_decay']!r}"
        )
    kwargs.pop("weight_decay", None)
    fraction = arguments["fraction"]
    if not callable(fraction):  # a schedule is checked by Keras
        fraction = l4_config.check_fraction(fraction)
    rule = l4_config.make_rule(**l4_config.rule_arguments(arguments))
    estimators = {name: arguments[name] for name in _ESTIMATOR_ARGUMENTS}
    return fraction, rule, estimators


_ESTIMATOR_ARGUMENTS = (
    "gradient_estimator",
    "gradient_params",
    "direction_estimator",
    "direction_params",
)


def rule_config(rule, estimators):
    """The config entries of L4's own arguments (``fraction`` aside)."""
    return dict(
        minloss_factor=rule.minloss_factor,
        init_factor=rule.init_factor,
        minloss_forget_time=rule.minloss_forget_time,
        epsilon=rule.epsilon,
        loss_lower_bound=rule.loss_lower_bound,
        max_effective_learning_rate=rule.max_effective_learning_rate,
        **estimators,
    )


def take_loss(remembered, reduce_loss, rule):
    """The loss of the whole batch for this step, from the loss this replica
    remembered (see `L4.distribute.global_loss`)."""
    loss = distribute.global_loss(remembered.take(), reduce_loss)
    return l4_config.check_loss(loss, HOW_TO_PASS_LOSS, rule.loss_lower_bound)


def apply_step(
    rule, state, grads, variables, ema_variables, learning_rate, loss, assign
):
    """One L4 step of a Keras optimizer on all ``variables``.

    ``grads`` are summed over the replicas of a strategy, if any, and ``loss``
    is the loss of the whole batch. ``state`` holds the scalar state's
    variables (`L4.step_driver.StateVariables`), ``ema_variables[i]`` variable i's
    EMA variables, and ``assign(variable, value)`` writes one. Under a
    strategy, the step runs on each device's copies.
    """
    grads = [execution.dense_gradient(g, v) for g, v in zip(grads, variables)]

    def step(grads, learning_rate, loss):
        step_driver.run_step(
            rule,
            learning_rate,
            loss,
            list(zip(grads, variables)),
            ema_variables,
            state,
            assign,
            train_op=False,
        )

    distribute.merge(
        lambda *args: distribute.on_each_device(
            step, execution.tf_variable(state.step), *args
        ),
        grads,
        tf.convert_to_tensor(learning_rate),
        loss,
    )


class LogL4Mixin:
    """Adds L4's last ``effective_learning_rate`` and ``min_loss`` to ``fit``'s
    logs; each front end mixes it into its Keras' ``Callback`` as ``LogL4``."""

    def on_train_batch_end(self, batch, logs=None):
        self._add(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._add(logs)

    def _add(self, logs):
        opt = self.model.optimizer
        opt = getattr(opt, "inner_optimizer", opt)  # under a LossScaleOptimizer
        if (
            logs is not None
            and getattr(opt, "effective_learning_rate", None) is not None
        ):
            logs["effective_learning_rate"] = float(opt.effective_learning_rate.numpy())
            logs["min_loss"] = float(opt.min_loss.numpy())
