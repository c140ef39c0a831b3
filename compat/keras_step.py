"""What L4's Keras 3 and Keras 2 optimizers share: arguments, the step, the config.

Each front end keeps L4's state in its Keras' optimizer variables; this module
checks the arguments, runs one `L4.rule.l4_step` over all variables and writes
its result back, with the front end's own ``assign``.
"""

import tensorflow as tf

from L4 import config, distribute, fused
from L4 import rule as l4_rule

HOW_TO_PASS_LOSS = (
    "In a custom training loop, pass it: "
    "`opt.apply_gradients(zip(grads, variables), loss=loss)`. "
    "`model.fit` passes it to the optimizer itself."
)


def check_arguments(
    fraction,
    minloss_factor,
    init_factor,
    minloss_forget_time,
    epsilon,
    gradient_estimator,
    gradient_params,
    direction_estimator,
    direction_params,
    loss_lower_bound,
    max_effective_learning_rate,
    kwargs,
):
    """Checks ``L4General``'s arguments; returns ``fraction``, the `Rule` and the
    estimator arguments to serialize. Removes ``weight_decay`` from ``kwargs``."""
    if kwargs.get("weight_decay") is not None:
        raise ValueError(
            "L4 does not support Keras' `weight_decay` (Keras would scale it "
            "by `fraction`); add a regularization loss instead. "
            f"Received: weight_decay={kwargs['weight_decay']!r}"
        )
    kwargs.pop("weight_decay", None)
    if not callable(fraction):  # a schedule is checked by Keras
        fraction = config.check_fraction(fraction)
    rule = config.make_rule(
        minloss_factor,
        init_factor,
        minloss_forget_time,
        epsilon,
        gradient_estimator,
        gradient_params,
        direction_estimator,
        direction_params,
        loss_lower_bound,
        max_effective_learning_rate,
    )
    estimators = dict(
        gradient_estimator=gradient_estimator,
        gradient_params=gradient_params,
        direction_estimator=direction_estimator,
        direction_params=direction_params,
    )
    return fraction, rule, estimators


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


def take_loss(opt):
    """The loss of the whole batch for ``opt``'s step, from the loss this
    replica remembered (see `L4.distribute.global_loss`)."""
    loss = distribute.global_loss(opt._remembered_loss.take(), opt._reduce_loss)
    return config.check_loss(loss, HOW_TO_PASS_LOSS, opt._rule.loss_lower_bound)


def apply_step(opt, grads, variables, moments, learning_rate, loss, assign):
    """One L4 step of the Keras optimizer ``opt`` on all ``variables``.

    ``grads`` are summed over the replicas of a strategy, if any, and ``loss``
    is the loss of the whole batch. ``moments[i]`` are variable i's EMA
    variables, ``opt._step``, ``opt._skipped``, ``opt._min_loss`` and
    ``opt._effective_lr`` the scalar state, and ``assign(variable, value)``
    writes one. Under a strategy, the step runs on each device's copies.
    """
    grads = [l4_rule.dense_gradient(g, v) for g, v in zip(grads, variables)]

    def step(grads, learning_rate, loss):
        values = [[tf.convert_to_tensor(m) for m in ms] for ms in moments]
        result = l4_rule.l4_step(
            opt._rule,
            learning_rate,
            loss,
            grads=grads,
            moments=values,
            state=l4_rule.State(
                tf.convert_to_tensor(opt._step),
                tf.convert_to_tensor(opt._min_loss),
                tf.convert_to_tensor(opt._skipped),
            ),
        )

        def assign_state(state, eta):
            assign(opt._step, state.step)
            assign(opt._skipped, state.skipped)
            assign(opt._min_loss, state.min_loss)
            assign(opt._effective_lr, eta)

        def take_step():
            for i, (var, var_moments, grad) in enumerate(
                zip(variables, moments, grads)
            ):
                fused.apply_update(result, i, var, var_moments, grad, assign)
            assign_state(result.state, result.effective_learning_rate)

        def skip_step():
            assign_state(result.skipped_state, result.effective_learning_rate)

        if l4_rule.selection_is_cheaper(result):
            result = l4_rule.select_taken(result, values)
            take_step()
        else:
            tf.cond(result.ok, take_step, skip_step)

    anchor = fused.tf_variable(opt._step)
    distribute.merge(
        lambda *args: distribute.on_each_device(step, anchor, *args),
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
