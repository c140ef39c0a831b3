"""Runs an optimizer on a problem in each execution mode and records each step.

Modes: ``graph_ref`` / ``graph_resource`` (a tf.compat.v1 Session on ref or
resource variables), ``graph_default`` (a Session on the variables
``tf.compat.v1.get_variable`` makes by default: ref variables under
``disable_v2_behavior()``), ``eager``, ``function`` and ``xla``
(``tf.function(jit_compile=True)``).
"""

from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from l4_reference import L4Reference

GRAPH_MODES = ("graph_ref", "graph_resource", "graph_default")
EAGER_MODES = ("eager", "function", "xla")
MODES = GRAPH_MODES + EAGER_MODES

# How the step is asked for; every form must give the same numbers.
FORMS = ("minimize", "positional_loss", "keyword_loss", "remembered_loss")
# The same for the Keras optimizers of L4.compat ("scale_loss" is model.fit's way).
KERAS_FORMS = ("keyword_loss", "apply", "scale_loss")


class Record(NamedTuple):
    params: list
    eta: float
    min_loss: float


class RecordStepsMixin:
    """A Keras callback (mixed into each Keras' ``Callback``) that records the
    weights, eta and L_min after every batch in ``records``."""

    def __init__(self):
        super().__init__()
        self.records = []

    def on_train_batch_end(self, batch, logs=None):
        opt = self.model.optimizer
        self.records.append(
            Record(
                [w.numpy() for w in self.model.trainable_weights],
                opt.effective_learning_rate.numpy(),
                opt.min_loss.numpy(),
            )
        )


def make_variables(mode, values, dtype):
    if mode == "graph_default":
        return [
            tf.compat.v1.get_variable(f"p{i}", initializer=tf.constant(v, dtype))
            for i, v in enumerate(values)
        ]
    if mode in GRAPH_MODES:
        return [
            tf.compat.v1.Variable(
                tf.constant(v, dtype), use_resource=mode == "graph_resource"
            )
            for v in values
        ]
    return [tf.Variable(tf.constant(v, dtype)) for v in values]


def apply_keras_step(opt, loss_fn, var_list, form="keyword_loss"):
    """One training step of an ``L4.compat`` optimizer in the calling ``form``."""
    with tf.GradientTape() as tape:
        loss = loss_fn()
        if form == "scale_loss":
            loss = opt.scale_loss(loss)
    grads = tape.gradient(loss, var_list)
    if form == "keyword_loss":
        opt.apply_gradients(zip(grads, var_list), loss=loss)
    elif form == "apply":
        opt.apply(grads, var_list, loss=loss)
    else:
        assert form == "scale_loss", form
        opt.apply_gradients(zip(grads, var_list))


def apply_step(opt, loss_fn, var_list, form="minimize", **kwargs):
    """One training step of ``opt`` in the calling ``form``; an op in graph mode."""
    if form in KERAS_FORMS[1:]:
        return apply_keras_step(opt, loss_fn, var_list, form)
    graph = not tf.compat.v1.executing_eagerly_outside_functions()
    if form == "minimize":
        return opt.minimize(
            loss_fn() if graph else loss_fn, var_list=var_list, **kwargs
        )
    if form == "keyword_loss" and isinstance(opt, keras.optimizers.Optimizer):
        return apply_keras_step(opt, loss_fn, var_list, form)
    if form == "remembered_loss":
        gv = opt.compute_gradients(loss_fn() if graph else loss_fn, var_list=var_list)
        return opt.apply_gradients(gv, **kwargs)
    if graph:
        loss = loss_fn()
        grads = tf.compat.v1.gradients(loss, var_list)
    else:
        with tf.GradientTape() as tape:
            loss = loss_fn()
        grads = tape.gradient(loss, var_list)
    gv = list(zip(grads, var_list))
    if form == "positional_loss":
        return opt.apply_gradients(gv, loss, **kwargs)
    assert form == "keyword_loss", form
    return opt.apply_gradients(gv, loss=loss, **kwargs)


def run(mode, problem, make_optimizer, steps, dtype=tf.float32, form="minimize"):
    """Trains ``steps`` steps; returns a `Record` after each and the optimizer."""
    records = []
    if mode in GRAPH_MODES:
        with tf.Graph().as_default():
            var_list = make_variables(mode, problem.init, dtype)
            opt = make_optimizer()
            train_op = apply_step(
                opt, lambda: problem.tf_loss(var_list), var_list, form
            )
            with tf.compat.v1.Session() as sess:
                sess.run(tf.compat.v1.global_variables_initializer())
                for _ in range(steps):
                    sess.run(train_op)
                    params, eta, min_loss = sess.run(
                        [var_list, opt.effective_learning_rate, opt.min_loss]
                    )
                    records.append(Record(params, eta, min_loss))
        return records, opt

    var_list = make_variables(mode, problem.init, dtype)
    opt = make_optimizer()

    def step():
        apply_step(opt, lambda: problem.tf_loss(var_list), var_list, form)

    if mode != "eager":
        step = tf.function(step, jit_compile=mode == "xla")
    for _ in range(steps):
        step()
        records.append(
            Record(
                [v.numpy() for v in var_list],
                opt.effective_learning_rate.numpy(),
                opt.min_loss.numpy(),
            )
        )
    return records, opt


def reference_run(problem, steps, **kwargs):
    """The numpy reference on the same problem: a `Record` after each step."""
    ref = L4Reference(problem.init, **kwargs)
    records = []
    for _ in range(steps):
        loss, grads = problem.numpy_loss_and_grads(ref.params)
        ref.step(loss, grads)
        records.append(Record([p.copy() for p in ref.params], ref.eta, ref.min_loss))
    return records


TOLERANCES = {
    tf.float64: dict(rtol=1e-9, atol=1e-12),
    tf.float32: dict(rtol=2e-4, atol=1e-5),
}


def assert_records_close(actual, expected, dtype):
    """Compares every step's parameters, eta and L_min."""
    tol = TOLERANCES[dtype]
    assert len(actual) == len(expected)
    for step, (a, e) in enumerate(zip(actual, expected)):
        for i, (pa, pe) in enumerate(zip(a.params, e.params)):
            np.testing.assert_allclose(
                pa, pe, **tol, err_msg=f"param {i} at step {step}"
            )
        np.testing.assert_allclose(a.eta, e.eta, **tol, err_msg=f"eta at step {step}")
        np.testing.assert_allclose(
            a.min_loss, e.min_loss, **tol, err_msg=f"L_min at step {step}"
        )
