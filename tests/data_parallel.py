"""Data-parallel training runs shared by test_distribute.py and the
multi-worker processes of test_multi_worker.py."""

import functools
import socket

import numpy as np
import tensorflow as tf

import L4
import L4.compat

from harness import record_eagerly, record_session
from problems import LeastSquares

STEPS = 50
# The CPU split in two logical devices (conftest.py).
DEVICES = ["/cpu:0", "/cpu:1"]
SAME_TRAJECTORY = dict(rtol=1e-5, atol=1e-6)

OPTIMIZERS = {
    ("v1", "L4Adam"): L4.L4Adam,
    ("v1", "L4Mom"): L4.L4Mom,
    ("keras", "L4Adam"): L4.compat.L4Adam,
    ("keras", "L4Mom"): L4.compat.L4Mom,
}


@functools.cache
def mirrored():
    """One MirroredStrategy over `DEVICES` for the whole test process:
    strategies made one after another number their collective ops alike,
    and eager collectives of a later one can meet the earlier one's."""
    return tf.distribute.MirroredStrategy(DEVICES)


# TensorFlow's own, to count the collective ops L4 adds.
PLAIN_OPTIMIZERS = {
    "v1": lambda: tf.compat.v1.train.GradientDescentOptimizer(0.1),
    "keras": lambda: tf.keras.optimizers.SGD(0.1),
}


def train(
    front, name, strategy, steps, *, poison_step=None, restore=None, mode="function"
):
    """Trains `LeastSquares` with each replica on its share of the rows.

    Each replica's loss is its share of the batch loss (the mean over the
    whole batch), as `tf.nn.compute_average_loss` gives. At ``poison_step``
    the last replica's rows are NaN. ``restore`` is a checkpoint path to
    continue from. Returns a `Record` per step, the variables and the optimizer.
    """
    problem = LeastSquares()
    n = len(problem.x)
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        var_list = [tf.Variable(p.astype(np.float32)) for p in problem.init]
        opt = OPTIMIZERS[front, name]()
        if front == "keras":
            opt.build(var_list)
    if restore is not None:
        # The v1 optimizer makes its state at its first step, which then
        # takes its values from the checkpoint (deferred restoration).
        status = tf.train.Checkpoint(params=var_list, opt=opt).read(restore)
        status.assert_existing_objects_matched()

    def loss_share(x, y):
        r = tf.matmul(x, var_list[0]) + var_list[1] - y
        return 0.5 * tf.reduce_sum(r * r) / n

    def share(x, y):
        if front == "v1":
            opt.minimize(lambda: loss_share(x, y), var_list=var_list)
            return
        with tf.GradientTape() as tape:
            loss = loss_share(x, y)
        grads = tape.gradient(loss, var_list)
        opt.apply_gradients(zip(grads, var_list), loss=loss)

    def rows(data, context):
        i = context.replica_id_in_sync_group
        return tf.constant(data[i * n // replicas : (i + 1) * n // replicas])

    def batch(k):
        x = problem.x.astype(np.float32)
        if k == poison_step:
            x = x.copy()
            x[-n // replicas :] = np.nan
        return tuple(
            strategy.experimental_distribute_values_from_function(
                functools.partial(rows, data)
            )
            for data in (x, problem.y.astype(np.float32))
        )

    records = record_eagerly(
        mode,
        lambda x, y: strategy.run(share, args=(x, y)),
        opt,
        var_list,
        [batch(k) for k in range(steps)],
    )
    return records, var_list, opt


def copies(variable):
    """The per-device copies of a distributed (tf or Keras) variable."""
    if not isinstance(variable, tf.Variable):  # a Keras 3 variable wraps one
        variable = variable.value
    return [v.numpy() for v in variable.values]


def optimizer_state(front, opt, var_list):
    """L4's scalar state and EMA variables in ``opt`` (``front``: v1 or keras)."""
    scalars = [
        opt.step_count,
        opt.min_loss,
        opt.effective_learning_rate,
        opt.skipped_steps,
    ]
    if front == "v1":
        emas = [opt.get_slot(v, s) for v in var_list for s in opt.get_slot_names()]
    else:
        emas = [m for ms in opt._moments for m in ms]
    return scalars + emas


def assert_copies_identical(front, var_list, opt):
    """Every device's copy of the variables and of L4's state is the same."""
    for variable in list(var_list) + optimizer_state(front, opt, var_list):
        first, *others = copies(variable)
        assert others, variable.name
        for other in others:
            np.testing.assert_array_equal(other, first, err_msg=variable.name)


def collective_ops(function, *args):
    """The collective ops in the graph ``function`` traces for ``args``."""
    graph_def = function.get_concrete_function(*args).graph.as_graph_def()
    nodes = list(graph_def.node)
    for f in graph_def.library.function:
        nodes += f.node_def
    return [n.op for n in nodes if n.op.startswith("Collective")]


def traced_step(strategy, front, make_optimizer):
    """A `tf.function` of one step of a fresh optimizer under ``strategy``."""
    with strategy.scope():
        var_list = [tf.Variable(tf.ones([4, 3])), tf.Variable(tf.zeros([3]))]
        var_list += [tf.Variable(tf.zeros([3])) for _ in range(4)]
        opt = make_optimizer()
        if front == "keras":
            opt.build(var_list)

    def share(x):
        def loss_fn():
            y = tf.matmul(x, var_list[0]) + tf.add_n(var_list[1:])
            return tf.reduce_sum(y**2)

        if front == "v1":
            opt.minimize(loss_fn, var_list=var_list)
        else:
            with tf.GradientTape() as tape:
                loss = loss_fn()
            grads = tape.gradient(loss, var_list)
            if isinstance(opt, L4.compat.L4General):
                opt.apply_gradients(zip(grads, var_list), loss=loss)
            else:
                opt.apply_gradients(zip(grads, var_list))

    return tf.function(lambda x: strategy.run(share, args=(x,)))


def train_in_session(name, strategy, steps, use_resource=None):
    """`train` for the v1 optimizers in a tf.compat.v1 Session graph
    (``strategy`` made in that graph); returns the final `Record` and each
    device's copy of the variables and of L4's state."""
    problem = LeastSquares()
    n = len(problem.x)
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        var_list = [
            tf.compat.v1.get_variable(
                f"p{i}", initializer=p.astype(np.float32), use_resource=use_resource
            )
            for i, p in enumerate(problem.init)
        ]
        opt = OPTIMIZERS["v1", name]()

    def share():
        i = tf.distribute.get_replica_context().replica_id_in_sync_group
        rows = tf.range(i * (n // replicas), (i + 1) * (n // replicas))
        x, y = (
            tf.gather(tf.constant(d.astype(np.float32)), rows)
            for d in (problem.x, problem.y)
        )

        r = tf.matmul(x, var_list[0]) + var_list[1] - y
        # A loss tensor, as TF1 code passes it (TensorFlow's v1 optimizers
        # take a callable loss through a GradientTape, which cannot watch
        # distributed ref variables).
        return opt.minimize(0.5 * tf.reduce_sum(r * r) / n, var_list=var_list)

    train_op = strategy.group(strategy.run(share))
    state = [
        opt.step_count,
        opt.min_loss,
        opt.effective_learning_rate,
        opt.skipped_steps,
    ]
    state += [opt.get_slot(v, s) for v in var_list for s in opt.get_slot_names()]
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        last = record_session(sess, train_op, opt, var_list, steps)[-1]
        copies = [sess.run(list(getattr(v, "values", [v]))) for v in var_list + state]
    return last, copies


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
