"""Writes one L4 step into variables: the one step driver of all front ends.

The ``tf.compat.v1`` optimizers (`L4.optimizers`) and both Keras ones
(`L4.compat`) keep L4's state in variables of their own kinds. Each hands
`run_step` its scalar state (`StateVariables`), its EMA variables and its way
to assign; `run_step` computes the step from their values
(`L4.execution.l4_step`) and writes it: every variable, EMA and the state if
the step is taken, only the state (the skip counted) if it is not.
"""

from typing import NamedTuple

import tensorflow as tf

from L4 import execution
from L4.rule import State


class StateVariables(NamedTuple):
    """The variables of L4's scalar state: t, the skip count, L_min and the
    last step's eta."""

    step: object
    skipped: object
    min_loss: object
    effective_learning_rate: object

    def values(self) -> State:
        """Their current values, as the rule's `L4.rule.State`."""
        return State(
            tf.convert_to_tensor(self.step),
            tf.convert_to_tensor(self.min_loss),
            tf.convert_to_tensor(self.skipped),
        )


class StateProperties:
    """The scalar state as every front end exposes it: each property is the
    variable, `None` until the optimizer has made it (at its first step, or
    when a Keras optimizer is built; per graph for the ``tf.compat.v1``
    optimizers). A front end defines ``_state_variables``."""

    @property
    def min_loss(self):
        """The variable holding L_min."""
        return self._state_variables.min_loss

    @property
    def effective_learning_rate(self):
        """The variable holding the last step's eta (0 for a skipped step)."""
        return self._state_variables.effective_learning_rate

    @property
    def step_count(self):
        """The variable holding L4's own step count t."""
        return self._state_variables.step

    @property
    def skipped_steps(self):
        """The variable counting the steps skipped for a non-finite loss or update."""
        return self._state_variables.skipped


def run_step(
    rule,
    fraction,
    loss,
    pairs,
    slots,
    state: StateVariables,
    assign,
    *,
    use_locking=False,
    select=False,
    apply_constraints=False,
):
    """Computes one L4 step and writes it.

    Args:
        rule: the `L4.rule.Rule`, its tensors read for this step.
        fraction: alpha for this step.
        loss: the loss of the whole batch (summed over replicas already).
        pairs: ``(dense gradient, variable)`` for every variable.
        slots: for each variable, its EMA variables in ``rule.layout`` order.
        state: the scalar state's variables.
        assign: ``assign(variable, value)`` writes an EMA or a state variable
            the front end's way; it returns an op, or `None`.
        use_locking: passed to TensorFlow's fused kernels.
        select: take every write by selection instead of branching on the
            step's ``ok`` (graphs that cannot branch around assignments: ref
            variables under TF2's control flow).
        apply_constraints: project each variable with its ``constraint``
            after its update, as TensorFlow's v1 optimizers do (Keras applies
            constraints itself).

    Returns:
        A tensor computed after every write (graph mode), for the caller to
        group into its train op.
    """
    emas = [[tf.convert_to_tensor(s) for s in var_slots] for var_slots in slots]
    result = execution.l4_step(
        rule,
        fraction,
        loss,
        grads=[g for g, _ in pairs],
        emas=emas,
        state=state.values(),
        fuse=not select,
    )

    def write_state(new_state):
        eta = result.effective_learning_rate
        return [
            assign(state.step, new_state.step),
            assign(state.skipped, new_state.skipped),
            assign(state.min_loss, new_state.min_loss),
            assign(state.effective_learning_rate, eta),
        ]

    def take_step():
        ops = write_state(result.state)
        for i, ((grad, var), var_slots) in enumerate(zip(pairs, slots)):
            update = execution.apply_update(
                result, i, var, var_slots, grad, assign, use_locking
            )
            if apply_constraints and var.constraint is not None:
                update = [_constrain(var, update, use_locking)]
            ops += update
        return _done_after(ops)

    def skip_step():
        return _done_after(write_state(result.skipped_state))

    # The branch runs after `ok`, which depends on every read of the state,
    # so reads and writes stay apart also in graphs without automatic
    # control dependencies (ref variables, v1 graphs).
    if select or execution.selection_is_cheaper(result):
        result = execution.select_taken(result, emas)
        return take_step()
    return tf.cond(result.ok, take_step, skip_step)


def _constrain(var, update, use_locking):
    """Projects ``var`` after ``update``, as TensorFlow's optimizers do."""
    with tf.control_dependencies([op for op in update if op is not None]):
        return var.assign(
            var.constraint(var), use_locking=use_locking, read_value=False
        )


def _done_after(ops):
    """A tensor computed after ``ops`` (tf.cond's branches return tensors)."""
    with tf.control_dependencies([op for op in ops if op is not None]):
        return tf.constant(True)
