"""Legacy TF1 training code that combines gradients between `compute_gradients`
and `apply_gradients`: towers, clones, manual loss scaling, SyncReplicasOptimizer.

Whatever combines the gradients must combine the loss the same way: with
``carry_loss=True`` (or the loss passed) the combined runs end where one
process on the whole batch ends; without it, L4 says so instead of taking a
wrong loss silently.
"""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import L4

import data_parallel
from harness import make_variables
from problems import LeastSquares

KINDS = ["graph_ref", "graph_resource"]
STEPS = 10
RTOL = 1e-5
PROBLEM = LeastSquares(n=16)
REGULARIZATION = 0.01


def half_loss(params, half):
    """The least-squares loss on one half of the batch."""
    w, b = params
    rows = slice(8 * half, 8 * (half + 1))
    x = tf.constant(PROBLEM.x[rows], tf.float32)
    y = tf.constant(PROBLEM.y[rows], tf.float32)
    r = tf.matmul(x, w) + b - y
    return 0.5 * tf.reduce_mean(tf.reduce_sum(r * r, axis=1))


def regularization(params):
    return REGULARIZATION * tf.reduce_sum(params[0] ** 2)


def train(kind, build, steps=STEPS):
    """Builds ``build(params) -> train_op`` in a new graph and runs it; the
    final parameters."""
    with tf.Graph().as_default():
        params = make_variables(kind, PROBLEM.init, tf.float32)
        train_op = build(params)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for _ in range(steps):
                sess.run(train_op)
            return sess.run(params)


def whole_batch(params, regularized=False):
    """One process on the whole batch: the mean of the halves' losses."""
    loss = (half_loss(params, 0) + half_loss(params, 1)) / 2
    if regularized:
        loss += regularization(params)
    return L4.L4Adam().minimize(loss, var_list=params)


def assert_same_params(actual, expected, rtol=RTOL):
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=1e-7)


def average_towers(tower_grads):
    """As TensorFlow's cifar10_multi_gpu_train.py averages its towers."""
    averaged = []
    for grad_and_vars in zip(*tower_grads):
        grads = [tf.expand_dims(g, 0) for g, _ in grad_and_vars]
        grad = tf.reduce_mean(tf.concat(grads, axis=0), 0)
        averaged.append((grad, grad_and_vars[0][1]))
    return averaged


def sum_clones(clone_grads):
    """As tf-slim's model_deploy.optimize_clones sums its clones."""
    return [
        (tf.add_n([g for g, _ in grad_and_vars]), grad_and_vars[0][1])
        for grad_and_vars in zip(*clone_grads)
    ]


@pytest.fixture
def tf_warnings():
    """The messages TensorFlow's logger warns of while the test runs."""
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect(logging.WARNING)
    tf.get_logger().addHandler(handler)
    yield messages
    tf.get_logger().removeHandler(handler)


def l4_warnings(messages):
    return [m for m in messages if m.startswith("L4:")]


# -- Towers ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("form", ["carry_loss", "loss"])
def test_averaged_towers_follow_one_process(kind, form):
    def towers(params):
        opt = L4.L4Adam(carry_loss=form == "carry_loss")
        losses = [half_loss(params, i) for i in range(2)]
        tower_grads = [opt.compute_gradients(loss, params) for loss in losses]
        loss = tf.add_n(losses) / 2 if form == "loss" else None
        return opt.apply_gradients(average_towers(tower_grads), loss=loss)

    assert_same_params(train(kind, towers), train(kind, whole_batch))


def test_towers_without_a_loss_warn_once_per_graph(tf_warnings):
    with tf.Graph().as_default():
        params = make_variables("graph_resource", PROBLEM.init, tf.float32)
        opt = L4.L4Adam()
        for _ in range(2):
            tower_grads = [
                opt.compute_gradients(half_loss(params, i), params) for i in range(2)
            ]
            opt.apply_gradients(average_towers(tower_grads))
    (message,) = l4_warnings(tf_warnings)
    assert "called with 2 different losses" in message
    assert "carry_loss=True" in message and "loss=loss" in message


# -- Clones (tf-slim's model_deploy) -------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_summed_clones_follow_one_process(kind):
    def clones(params):
        opt = L4.L4Adam(carry_loss=True)
        clone_grads = []
        for i in range(2):
            # Each clone's loss divided by the number of clones, the
            # regularization on the first one, as model_deploy does.
            loss = half_loss(params, i) / 2
            if i == 0:
                loss += regularization(params)
            clone_grads.append(opt.compute_gradients(loss, params))
        return opt.apply_gradients(sum_clones(clone_grads))

    expected = train(kind, lambda p: whole_batch(p, regularized=True))
    assert_same_params(train(kind, clones), expected)


# -- Manual loss scaling -------------------------------------------------------


def manual_loss_scaling(scale, carry_loss):
    """The pre-wrapper mixed-precision form: gradients of S * L, divided by S."""

    def build(params):
        opt = L4.L4Adam(carry_loss=carry_loss)
        s = scale() if callable(scale) else scale
        loss = (half_loss(params, 0) + half_loss(params, 1)) / 2
        grads_and_vars = opt.compute_gradients(loss * s, params)
        return opt.apply_gradients([(g / s, v) for g, v in grads_and_vars])

    return build


def scale_variable():
    return tf.compat.v1.Variable(128.0, trainable=False, name="loss_scale")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", [128.0, scale_variable], ids=["constant", "variable"])
def test_manual_loss_scaling_with_carry_loss_follows_the_unscaled_run(kind, scale):
    scaled = train(kind, manual_loss_scaling(scale, carry_loss=True))
    assert_same_params(scaled, train(kind, whole_batch))


@pytest.mark.parametrize("scale", [128.0, scale_variable], ids=["constant", "variable"])
def test_manual_loss_scaling_without_carry_loss_warns(scale, tf_warnings):
    train("graph_resource", manual_loss_scaling(scale, carry_loss=False), steps=1)
    (message,) = l4_warnings(tf_warnings)
    assert "multiplied or divided by /" in message
    assert ("128.0" in message) == (scale == 128.0)
    assert "carry_loss=True" in message


def clip_each(grads_and_vars):
    return [(tf.clip_by_norm(g, 0.5), v) for g, v in grads_and_vars]


def clip_global(grads_and_vars):
    grads, _ = tf.clip_by_global_norm([g for g, _ in grads_and_vars], 0.5)
    return list(zip(grads, [v for _, v in grads_and_vars]))


def multiply_one(grads_and_vars):
    """A gradient multiplier on one variable (tf-slim's multiply_gradients)."""
    (g0, v0), *rest = grads_and_vars
    return [(g0 * 2.0, v0), *rest]


def cast_twice(grads_and_vars):
    return [(tf.cast(tf.cast(g, tf.float64), tf.float32), v) for g, v in grads_and_vars]


@pytest.mark.parametrize(
    "transform",
    [clip_each, clip_global, multiply_one, cast_twice, lambda gv: gv],
    ids=["clip_by_norm", "clip_by_global_norm", "one_multiplier", "cast", "unchanged"],
)
def test_transforms_that_keep_the_loss_meaning_do_not_warn(transform, tf_warnings):
    def build(params):
        opt = L4.L4Adam()
        loss = half_loss(params, 0)
        return opt.apply_gradients(transform(opt.compute_gradients(loss, params)))

    train("graph_resource", build, steps=1)
    assert l4_warnings(tf_warnings) == []


@pytest.mark.parametrize("kind", KINDS)
def test_clipping_leaves_the_carried_pair_alone(kind):
    """The README's form: clip all but the last pair, then hand it back."""

    def build(carry_loss):
        def step(params):
            opt = L4.L4Adam(carry_loss=carry_loss)
            loss = (half_loss(params, 0) + half_loss(params, 1)) / 2
            grads_and_vars = opt.compute_gradients(loss, params)
            carried = [grads_and_vars.pop()] if carry_loss else []
            return opt.apply_gradients(clip_global(grads_and_vars) + carried)

        return step

    assert_same_params(train(kind, build(True)), train(kind, build(False)), rtol=0)


def test_the_v1_loss_scale_wrapper_does_not_warn(tf_warnings):
    def build(params):
        opt = tf.compat.v1.mixed_precision.MixedPrecisionLossScaleOptimizer(
            L4.L4Adam(), loss_scale=128.0
        )
        return opt.minimize(half_loss(params, 0), var_list=params)

    train("graph_resource", build, steps=1)
    assert l4_warnings(tf_warnings) == []


# -- The carried loss ------------------------------------------------------------


def test_the_carried_loss_stays_out_of_collections_and_checkpoints(tmp_path):
    with tf.Graph().as_default():
        params = make_variables("graph_resource", PROBLEM.init, tf.float32)
        opt = L4.L4Adam(carry_loss=True)
        grads_and_vars = opt.compute_gradients(half_loss(params, 0), params)
        assert len(grads_and_vars) == 3
        carried, carrier = grads_and_vars[-1]
        assert carrier.shape == () and "loss_carrier" in carrier.name
        opt.apply_gradients(grads_and_vars)
        collected = tf.compat.v1.global_variables() + tf.compat.v1.local_variables()
        assert not any("loss_carrier" in v.name for v in collected), collected
        # Initializing all variables and saving works without it.
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver().save(sess, str(tmp_path / "ckpt"))


def test_a_dropped_carried_loss_is_an_error():
    with tf.Graph().as_default():
        params = make_variables("graph_resource", PROBLEM.init, tf.float32)
        opt = L4.L4Adam(carry_loss=True)
        *pairs, (_, carrier) = opt.compute_gradients(half_loss(params, 0), params)
        with pytest.raises(ValueError, match="loss L4 carries .* was dropped"):
            opt.apply_gradients(pairs + [(None, carrier)])


def test_carry_loss_must_be_a_bool():
    with pytest.raises(TypeError, match="`carry_loss` must be True or False"):
        L4.L4Adam(carry_loss=1)


# -- Estimator ---------------------------------------------------------------------


@pytest.mark.skipif(
    not hasattr(tf, "estimator"),
    reason=f"tf.estimator is not in TensorFlow {tf.__version__} (removed in 2.16)",
)
def test_estimator_trains_and_resumes_as_one_session(tmp_path):
    """An Estimator ``model_fn`` with ``L4Adam().minimize(loss, global_step)``,
    trained for 4 + 6 steps (the second call restores the first's checkpoint)."""

    def model_fn(features, labels, mode):
        w, b = [
            tf.compat.v1.get_variable(name, initializer=value.astype(np.float32))
            for name, value in zip("wb", PROBLEM.init)
        ]
        r = tf.matmul(features, w) + b - labels
        loss = 0.5 * tf.reduce_mean(tf.reduce_sum(r * r, axis=1))
        train_op = L4.L4Adam().minimize(
            loss, global_step=tf.compat.v1.train.get_global_step()
        )
        return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)

    def input_fn():
        batch = (PROBLEM.x.astype(np.float32), PROBLEM.y.astype(np.float32))
        return tf.data.Dataset.from_tensors(batch).repeat()

    estimator = tf.estimator.Estimator(model_fn, model_dir=str(tmp_path))
    estimator.train(input_fn, steps=4)
    estimator.train(input_fn, steps=STEPS - 4)
    final = [estimator.get_variable_value(name) for name in "wb"]
    assert_same_params(final, train("graph_resource", whole_batch))


# -- skip_gradients_aggregation --------------------------------------------------


def test_skip_gradients_aggregation_outside_a_strategy_changes_nothing():
    def build(skip):
        def step(params):
            opt = L4.L4Adam()
            grads_and_vars = opt.compute_gradients(half_loss(params, 0), params)
            return opt.apply_gradients(grads_and_vars, skip_gradients_aggregation=skip)

        return step

    assert_same_params(
        train("graph_resource", build(True)),
        train("graph_resource", build(False)),
        rtol=0,
    )


@pytest.mark.eager
def test_skip_gradients_aggregation_takes_gradients_summed_by_the_caller():
    """Under MirroredStrategy: replicas that sum their gradients themselves
    and say so end where replicas that leave it to L4 end."""
    strategy = data_parallel.mirrored()

    def run(skip):
        with strategy.scope():
            params = [tf.Variable(p.astype(np.float32)) for p in PROBLEM.init]
            opt = L4.L4Adam()

        def replica_step():
            i = tf.distribute.get_replica_context().replica_id_in_sync_group
            with tf.GradientTape() as tape:
                # Each replica's share of the mean of the halves' losses.
                loss = (
                    tf.switch_case(
                        i, [lambda h=h: half_loss(params, h) for h in range(2)]
                    )
                    / 2
                )
            grads = tape.gradient(loss, params)
            if skip:
                context = tf.distribute.get_replica_context()
                grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            opt.apply_gradients(
                zip(grads, params), loss=loss, skip_gradients_aggregation=skip
            )

        step = tf.function(lambda: strategy.run(replica_step))
        for _ in range(STEPS):
            step()
        return [p.numpy() for p in params]

    with tf.Graph().as_default():
        expected = train("graph_resource", whole_batch)
    assert_same_params(run(skip=True), expected)
    assert_same_params(run(skip=False), expected)


# -- SyncReplicasOptimizer ---------------------------------------------------------


def test_sync_replicas_without_carry_loss_says_what_to_pass():
    with tf.Graph().as_default():
        params = make_variables("graph_resource", PROBLEM.init, tf.float32)
        step = tf.compat.v1.train.get_or_create_global_step()
        opt = tf.compat.v1.train.SyncReplicasOptimizer(
            L4.L4Adam(), replicas_to_aggregate=2
        )
        with pytest.raises(
            ValueError, match="aggregated over workers.*carry_loss=True"
        ):
            opt.minimize(half_loss(params, 0), global_step=step)


def test_summaries_run_neither_the_loss_nor_the_gradients():
    """``merge_all`` (a summary hook, tf-slim's learning.train) must not run
    the step's inputs: here a placeholder that is not fed."""
    with tf.Graph().as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4])
        params = make_variables("graph_resource", PROBLEM.init, tf.float32)
        loss = tf.reduce_mean((tf.matmul(x, params[0]) + params[1]) ** 2)
        opt = L4.L4Adam()
        train_op = opt.minimize(loss)
        merged = tf.compat.v1.summary.merge_all()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(train_op, {x: PROBLEM.x})
            eta = sess.run(opt.effective_learning_rate)
            event = tf.compat.v1.Summary.FromString(sess.run(merged))
    values = {v.tag.split("/")[-1]: v.simple_value for v in event.value}
    assert values["effective_learning_rate"] == pytest.approx(eta)
    assert eta > 0


WORKER = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "sync_replicas_worker.py"
)
TIMEOUT_S = 120


def run_processes(commands, server=None):
    """Runs ``commands`` of the worker script to their end, and ``server``
    (a parameter server, which runs until killed) beside them; ends them all."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    def start(args):
        return subprocess.Popen(
            [sys.executable, WORKER, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )

    processes = [start(args) for args in ([server] if server else []) + commands]
    try:
        outputs = [
            p.communicate(timeout=TIMEOUT_S)[0] for p in processes[-len(commands) :]
        ]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, output in zip(processes[-len(commands) :], outputs):
        assert p.returncode == 0, output[-3000:]


def load(path):
    saved = np.load(path)
    return [saved[f"arr_{i}"] for i in range(len(saved.files))]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "single.npz"
    run_processes([["--job", "single", "--out", str(out)]])
    return load(out)


@pytest.mark.subprocess
@pytest.mark.parametrize("inputs,behavior", [("feed", "graph"), ("queue", "v1")])
def test_sync_replicas_chief_follows_one_process(
    inputs, behavior, one_process, tmp_path
):
    """One parameter server and two workers on 127.0.0.1, between-graph
    replication, ``replicas_to_aggregate=2``, MonitoredTrainingSession with
    the sync hook and a checkpoint_dir (whose summary hook runs merge_all)."""
    ps, *workers = [f"127.0.0.1:{p}" for p in data_parallel.free_ports(3)]
    cluster = ["--ps", ps, "--workers", ",".join(workers), "--behavior", behavior]
    out = tmp_path / "chief.npz"
    chief = ["--checkpoint-dir", str(tmp_path / "ckpt"), "--out", str(out)]
    run_processes(
        [
            ["--job", "worker", "--index", "0", *cluster, "--inputs", inputs, *chief],
            ["--job", "worker", "--index", "1", *cluster, "--inputs", inputs],
        ],
        server=["--job", "ps", *cluster],
    )
    assert_same_params(load(out), one_process)


@pytest.mark.subprocess
def test_tf_slim_learning_train_with_a_sync_optimizer(one_process, tmp_path):
    out = tmp_path / "slim.npz"
    logdir = str(tmp_path / "logdir")
    run_processes([["--job", "slim", "--checkpoint-dir", logdir, "--out", str(out)]])
    assert_same_params(load(out), one_process)
