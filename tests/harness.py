"""The tests' one runner: trains an optimizer in each execution mode and
records every step, and the numpy reference to compare with.

`run_steps` (and `run`, on a problem's whole data) makes the variables and the
optimizer for a mode and records with `record_session` or `record_eagerly`;
tests that build their own graph or loop call those two (or `record`) alone,
and ``model.fit`` records with `RecordSteps`. `reference_run` gives the
reference's `Record` per step.

Modes: ``graph_ref`` / ``graph_resource`` (a tf.compat.v1 Session on ref or
resource variables), ``graph_default`` (a Session on the variables
``tf.compat.v1.get_variable`` makes by default: ref variables under
``disable_v2_behavior()``), ``eager``, ``function`` and ``xla``
(``tf.function(jit_compile=True)``).
"""

import importlib
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from L4.compat import tensorflow_keras_is_keras_2

from l4_reference import L4Reference

# The Keras whose optimizers L4.compat serves: Keras 3, or Keras 2 as
# ``tf.keras`` (TF 2.15 and earlier; tf_keras under TF_USE_LEGACY_KERAS).
keras = tf.keras if tensorflow_keras_is_keras_2() else importlib.import_module("keras")

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


def make_variables(mode, values, dtype, **var_kwargs):
    """Variables of ``mode``'s kind holding ``values``; ``var_kwargs`` (e.g. a
    constraint) go to each."""
    if mode == "graph_default":
        return [
            tf.compat.v1.get_variable(
                f"p{i}", initializer=tf.constant(v, dtype), **var_kwargs
            )
            for i, v in enumerate(values)
        ]
    if mode in GRAPH_MODES:
        return [
            tf.compat.v1.Variable(
                tf.constant(v, dtype),
                use_resource=mode == "graph_resource",
                **var_kwargs,
            )
            for v in values
        ]
    return [tf.Variable(tf.constant(v, dtype), **var_kwargs) for v in values]


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


# -- The runner: every test that records steps records them here -------------


class Run(NamedTuple):
    records: list  # a `Record` after each step
    optimizer: object
    skipped_steps: int  # L4's count at the end (read before a Session closes)


def record(opt, var_list, sess=None):
    """The `Record` of ``var_list`` and ``opt``'s eta and L_min now: fetched
    in ``sess``, or read eagerly."""
    fetches = [var_list, opt.effective_learning_rate, opt.min_loss]
    if sess is not None:
        return Record(*sess.run(fetches))
    return Record(
        [v.numpy() for v in var_list],
        opt.effective_learning_rate.numpy(),
        opt.min_loss.numpy(),
    )


class RecordSteps(keras.callbacks.Callback):
    """A callback for ``model.fit`` that keeps a `Record` after every batch
    in ``records``."""

    def __init__(self):
        super().__init__()
        self.records = []

    def on_train_batch_end(self, batch, logs=None):
        model = self.model
        self.records.append(record(model.optimizer, model.trainable_weights))


def record_session(sess, train_op, opt, var_list, steps, before=None):
    """Runs ``train_op`` ``steps`` times in ``sess``; ``before(i)`` runs before
    step i and may return its feed dict. A `Record` after each step."""
    records = []
    for i in range(steps):
        sess.run(train_op, before(i) if before else None)
        records.append(record(opt, var_list, sess))
    return records


def record_eagerly(mode, train_step, opt, var_list, inputs, before=None):
    """Calls ``train_step(*inputs[i])`` eagerly, in ``tf.function`` or under
    XLA (``mode``), after ``before(i)``; a `Record` after each step."""
    if mode != "eager":
        train_step = tf.function(train_step, jit_compile=mode == "xla")
    records = []
    for i, args in enumerate(inputs):
        if before:
            before(i)
        train_step(*args)
        records.append(record(opt, var_list))
    return records


def run_steps(
    mode,
    init,
    make_optimizer,
    train_step,
    inputs,
    *,
    dtype=tf.float32,
    before=None,
    var_kwargs=None,
):
    """Trains variables starting at ``init`` in ``mode``, a step per item of
    ``inputs`` (a tuple of arrays each, converted to ``dtype``); returns a `Run`.

    ``train_step(opt, var_list, *arrays)`` makes a step: in a Session it is
    called once, with placeholders for the arrays, and returns the train op;
    otherwise it is the step itself. ``before(i)`` runs before step i; in a
    Session it may return a feed dict (e.g. for a fed hyperparameter).
    """
    var_kwargs = var_kwargs or {}
    if mode not in GRAPH_MODES:
        var_list = make_variables(mode, init, dtype, **var_kwargs)
        opt = make_optimizer()

        def step(*arrays):
            train_step(opt, var_list, *arrays)  # a tf.function returns no op

        records = record_eagerly(
            mode,
            step,
            opt,
            var_list,
            [tuple(tf.constant(a, dtype) for a in args) for args in inputs],
            before,
        )
        return Run(records, opt, int(opt.skipped_steps.numpy()))
    with tf.Graph().as_default():
        var_list = make_variables(mode, init, dtype, **var_kwargs)
        opt = make_optimizer()
        holders = [
            tf.compat.v1.placeholder(dtype, [None, *np.shape(a)[1:]]) for a in inputs[0]
        ]
        train_op = train_step(opt, var_list, *holders)

        def feed(i):
            fed = dict(zip(holders, inputs[i]))
            fed.update((before(i) if before else None) or {})
            return fed

        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            records = record_session(sess, train_op, opt, var_list, len(inputs), feed)
            return Run(records, opt, int(sess.run(opt.skipped_steps)))


def run(
    mode, problem, make_optimizer, steps, dtype=tf.float32, form="minimize", **options
):
    """`run_steps` on ``problem``'s whole data, ``steps`` steps asked for in
    ``form``; ``options``: ``before``, ``var_kwargs``."""

    def train_step(opt, var_list):
        return apply_step(opt, lambda: problem.tf_loss(var_list), var_list, form)

    return run_steps(
        mode,
        problem.init,
        make_optimizer,
        train_step,
        [()] * steps,
        dtype=dtype,
        **options,
    )


def reference_run(
    problem, steps, *, batches=None, fractions=None, project=None, skip=(), **kwargs
):
    """The numpy reference (``kwargs``: its arguments); a `Record` after each
    step. Step i trains on ``batches[i]`` (x, y) if given, else on the whole
    ``problem``, with alpha ``fractions[i]`` if given; ``project`` maps the
    parameters after each step (a constraint); a step in ``skip`` changes
    nothing and reads eta 0, as a skipped step of the optimizer does."""
    ref = L4Reference(problem.init, **kwargs)
    records = []
    for i in range(steps):
        if i not in skip:
            data = problem if batches is None else problem.batch(*batches[i])
            fraction = None if fractions is None else fractions[i]
            ref.step(*data.numpy_loss_and_grads(ref.params), fraction=fraction)
            if project is not None:
                ref.params = [project(p) for p in ref.params]
        eta = 0.0 if i in skip else ref.eta
        records.append(Record([p.copy() for p in ref.params], eta, ref.min_loss))
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
