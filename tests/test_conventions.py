"""Conventions of TensorFlow's and Keras' own optimizers, kept by L4's front ends.

Tensor and callable hyperparameters, variable constraints, errors for tensors
in ``var_list``, odd global steps (``tf.compat.v1``); gradient dtypes, list
indices in ``tf.IndexedSlices``, gradient accumulation, default names (Keras).
"""

import numpy as np
import pytest
import tensorflow as tf

import L4
import L4.compat

from harness import (
    EAGER_MODES,
    GRAPH_MODES,
    Record,
    assert_records_close,
    keras,
    make_variables,
    record_session,
    reference_run,
    run,
    run_steps,
)
from l4_reference import L4ADAM, L4GENERAL_CUSTOM, L4MOM, L4Reference
from problems import LeastSquares, Logistic

V1_MODES = ["graph_ref", "graph_resource", *EAGER_MODES]


def _eager_if_needed(mode):
    return pytest.mark.eager if mode in EAGER_MODES else ()


def _modes(modes):
    return [pytest.param(m, marks=_eager_if_needed(m)) for m in modes]


# -- tf.compat.v1: hyperparameters as tensors, variables and callables --------

FRACTIONS = [0.3, 0.1, 0.25, 0.05, 0.2, 0.15, 0.3, 0.1]


@pytest.mark.parametrize("mode", _modes(V1_MODES))
def test_fraction_fed_per_step_follows_the_reference(mode):
    """A placeholder in a Session, a variable assigned between eager steps."""
    problem = LeastSquares()
    holder = {}

    def make_optimizer():
        if mode in GRAPH_MODES:
            holder["alpha"] = tf.compat.v1.placeholder(tf.float64, [])
        else:
            holder["alpha"] = tf.Variable(0.0, dtype=tf.float64)
        return L4.L4Adam(fraction=holder["alpha"])

    def feed(step):
        if mode in GRAPH_MODES:
            return {holder["alpha"]: FRACTIONS[step]}
        holder["alpha"].assign(FRACTIONS[step])

    actual = run(
        mode, problem, make_optimizer, len(FRACTIONS), tf.float64, before=feed
    ).records
    expected = reference_run(problem, len(FRACTIONS), fractions=FRACTIONS, **L4ADAM)
    assert_records_close(actual, expected, tf.float64)


@pytest.mark.parametrize("mode", _modes(V1_MODES))
def test_a_callable_fraction_is_called_at_each_step(mode):
    problem = Logistic()
    holder = {}

    def make_optimizer():
        holder["alpha"] = tf.compat.v1.Variable(
            0.2, dtype=tf.float64, use_resource=True
        )
        return L4.L4Mom(fraction=lambda: 0.5 * holder["alpha"])

    def feed(step):
        if mode in EAGER_MODES:
            holder["alpha"].assign(2 * FRACTIONS[step])
        else:
            holder["alpha"].load(2 * FRACTIONS[step])

    actual = run(
        mode, problem, make_optimizer, len(FRACTIONS), tf.float64, before=feed
    ).records
    expected = reference_run(problem, len(FRACTIONS), fractions=FRACTIONS, **L4MOM)
    assert_records_close(actual, expected, tf.float64)


@pytest.mark.parametrize("kind", ["graph_ref", "graph_resource"])
def test_an_exponential_decay_of_the_global_step_as_fraction(kind):
    """The TF1 way: ``fraction=tf.compat.v1.train.exponential_decay(...)``."""
    problem = LeastSquares()
    steps = 12
    with tf.Graph().as_default():
        var_list = make_variables(kind, problem.init, tf.float64)
        global_step = tf.compat.v1.train.get_or_create_global_step()
        alpha = tf.compat.v1.train.exponential_decay(
            0.3, global_step, decay_steps=5, decay_rate=0.5
        )
        opt = L4.L4Adam(fraction=alpha)
        train_op = opt.minimize(problem.tf_loss(var_list), global_step=global_step)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            fractions = []
            records = record_session(
                sess,
                train_op,
                opt,
                var_list,
                steps,
                before=lambda _: fractions.append(float(sess.run(alpha))),
            )
            assert sess.run(global_step) == steps
    # alpha is read before the step increments the global step.
    np.testing.assert_allclose(fractions, 0.3 * 0.5 ** (np.arange(steps) / 5), 1e-6)
    expected = reference_run(problem, steps, fractions=fractions, **L4ADAM)
    assert_records_close(records, expected, tf.float64)


@pytest.mark.parametrize("mode", _modes(V1_MODES))
def test_every_stepsize_hyperparameter_can_be_a_tensor(mode):
    """gamma, gamma0, tau and eps as tensors, variables and callables."""
    problem = LeastSquares()
    custom = L4GENERAL_CUSTOM

    def make_optimizer():
        variable = tf.compat.v1.Variable(custom["init_factor"], use_resource=True)
        kwargs = dict(
            custom,
            fraction=tf.constant(custom["fraction"], tf.float64),
            minloss_factor=tf.constant(custom["minloss_factor"], tf.float64),
            init_factor=variable,  # float32: cast to the loss's dtype
            minloss_forget_time=lambda: tf.constant(custom["minloss_forget_time"]),
            epsilon=lambda: custom["epsilon"],
        )
        return L4.L4General(**kwargs)

    actual = run(mode, problem, make_optimizer, 15, tf.float64).records
    # init_factor goes through float32 (0.5 is exact there).
    assert_records_close(actual, reference_run(problem, 15, **custom), tf.float64)


@pytest.mark.parametrize(
    "name, value",
    [
        ("fraction", -0.1),
        ("fraction", 0.0),
        ("fraction", np.nan),
        ("minloss_factor", 1.5),
        ("init_factor", -0.5),
        ("minloss_forget_time", 0.0),
        ("epsilon", -1e-9),
    ],
)
def test_a_bad_fed_hyperparameter_fails_when_the_step_runs(name, value):
    with tf.Graph().as_default():
        w = tf.compat.v1.Variable([1.0, 2.0])
        fed = tf.compat.v1.placeholder(tf.float32, [])
        train_op = L4.L4General(**{name: fed}).minimize(tf.reduce_sum(w * w))
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            good = {"fraction": 0.1, "minloss_factor": 0.9, "init_factor": 0.75}
            sess.run(train_op, {fed: good.get(name, 1.0)})  # a valid value runs
            with pytest.raises(
                tf.errors.InvalidArgumentError, match=rf"`{name}` must be in the range"
            ):
                sess.run(train_op, {fed: value})
            assert sess.run(w)[0] != 1.0  # the first step trained


@pytest.mark.eager
def test_a_bad_hyperparameter_variable_fails_eagerly():
    w = tf.Variable([1.0, 2.0])
    alpha = tf.Variable(0.1)
    opt = L4.L4Adam(fraction=alpha)
    opt.minimize(lambda: tf.reduce_sum(w * w), var_list=[w])
    alpha.assign(-1.0)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"`fraction` must be in the range \(0.0"
    ):
        opt.minimize(lambda: tf.reduce_sum(w * w), var_list=[w])


def test_hyperparameters_of_the_wrong_kind_are_clear_errors():
    with tf.Graph().as_default():
        w = tf.compat.v1.Variable([1.0, 2.0])
        for value, error, message in [
            (tf.constant("0.1"), TypeError, "`fraction` must be a real number"),
            (tf.constant([0.1, 0.2]), ValueError, "`fraction` must be a scalar"),
        ]:
            with pytest.raises(error, match=message):
                L4.L4Adam(fraction=value).minimize(tf.reduce_sum(w * w))
    with pytest.raises(ValueError, match="`fraction` must be a finite real number"):
        L4.L4Adam(fraction="0.1")  # numbers are still checked at construction


# -- tf.compat.v1: constraints, tensors in var_list, global steps -------------


def _clip(x):
    return tf.clip_by_value(x, -0.4, 0.4)


@pytest.mark.parametrize("name", ["L4Adam", "L4Mom"])
@pytest.mark.parametrize("mode", _modes(V1_MODES))
def test_variable_constraints_are_applied_after_each_update(mode, name):
    problem = LeastSquares()
    actual = run(
        mode,
        problem,
        getattr(L4, name),
        15,
        tf.float64,
        var_kwargs=dict(constraint=_clip),
    ).records
    expected = reference_run(
        problem,
        15,
        project=lambda p: np.clip(p, -0.4, 0.4),
        **(L4ADAM if name == "L4Adam" else L4MOM),
    )
    assert_records_close(actual, expected, tf.float64)
    assert np.abs(np.concatenate([p.ravel() for p in actual[-1].params])).max() == 0.4


@pytest.mark.eager
@pytest.mark.parametrize("mode", EAGER_MODES)
def test_keras_optimizers_apply_variable_constraints_too(mode):
    problem = LeastSquares()
    records = run(
        mode,
        problem,
        L4.compat.L4Adam,
        10,
        tf.float64,
        form="keyword_loss",
        var_kwargs=dict(constraint=_clip),
    ).records
    alpha = float(np.float32(0.15))  # Keras holds alpha in float32
    expected = reference_run(
        problem, 10, project=lambda p: np.clip(p, -0.4, 0.4), **L4ADAM, fraction=alpha
    )
    assert_records_close(records, expected, tf.float64)


def test_a_tensor_in_var_list_raises_what_tensorflow_raises():
    with tf.Graph().as_default():
        w = tf.compat.v1.Variable([1.0, 2.0])
        t = tf.identity(w)
        loss = tf.reduce_sum(t * t)
        for opt in (tf.compat.v1.train.AdamOptimizer(), L4.L4Adam()):
            with pytest.raises(NotImplementedError, match="Trying to update a Tensor"):
                opt.minimize(loss, var_list=[t])
        grads = tf.compat.v1.gradients(loss, [t])
        with pytest.raises(NotImplementedError, match="Trying to update a Tensor"):
            L4.L4Mom().apply_gradients(list(zip(grads, [t])), loss=loss)


@pytest.mark.eager
def test_a_tensor_in_var_list_raises_what_tensorflow_raises_eagerly():
    t = tf.constant([1.0, 2.0])
    # (AdamOptimizer fails earlier here, on the tensor's missing name.)
    for opt in (tf.compat.v1.train.GradientDescentOptimizer(0.1), L4.L4Adam()):
        with pytest.raises(NotImplementedError, match="Trying to update a Tensor"):
            opt.minimize(lambda: tf.reduce_sum(t * t), var_list=[t])


def _odd_global_steps():
    """Graphs whose global step ``get_or_create_global_step`` cannot serve, and
    whether L4 then increments the variable (an integer one it can find)."""
    return {
        "resource int64 named global_step": (
            lambda: tf.compat.v1.Variable(
                0, dtype=tf.int64, name="global_step", use_resource=True
            ),
            True,
        ),
        "ref int64 named global_step": (
            lambda: tf.compat.v1.Variable(
                0, dtype=tf.int64, name="global_step", use_resource=False
            ),
            True,
        ),
        "float variable in the collection": (
            lambda: _in_global_step_collection(tf.compat.v1.Variable(0.0, name="gs")),
            False,
        ),
        "float variable named global_step": (
            lambda: tf.compat.v1.Variable(0.0, name="global_step"),
            False,
        ),
        "a tensor named global_step": (
            lambda: tf.constant(0, tf.int64, name="global_step"),
            False,
        ),
    }


def _in_global_step_collection(variable):
    tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.GLOBAL_STEP, variable)
    return variable


@pytest.mark.parametrize("case", sorted(_odd_global_steps()))
def test_minimize_works_wherever_adam_does_whatever_the_global_step(case):
    make_step, incremented = _odd_global_steps()[case]
    problem = LeastSquares()
    with tf.Graph().as_default():
        step = make_step()
        var_list = make_variables("graph_resource", problem.init, tf.float64)
        tf.compat.v1.train.AdamOptimizer().minimize(problem.tf_loss(var_list))
        opt = L4.L4Adam()
        train_op = opt.minimize(problem.tf_loss(var_list), var_list=var_list)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            records = record_session(sess, train_op, opt, var_list, 5)
            assert sess.run(step) == (5 if incremented else 0)
    assert_records_close(records, reference_run(problem, 5, **L4ADAM), tf.float64)


# -- Keras: gradient dtypes, list indices, accumulation, names ----------------


@pytest.mark.eager
@pytest.mark.parametrize("mode", EAGER_MODES)
@pytest.mark.parametrize("name", ["L4Adam", "L4Mom"])
def test_a_float32_gradient_for_a_float64_variable_is_cast(mode, name):
    problem = LeastSquares()

    def train_step(opt, var_list):
        with tf.GradientTape() as tape:
            loss = problem.tf_loss(var_list)
        grads = [tf.cast(g, tf.float32) for g in tape.gradient(loss, var_list)]
        opt.apply_gradients(zip(grads, var_list), loss=tf.cast(loss, tf.float32))

    records = run_steps(
        mode,
        problem.init,
        getattr(L4.compat, name),
        train_step,
        [()] * 20,
        dtype=tf.float64,
    ).records
    assert all(p.dtype == np.float64 for p in records[-1].params)
    kwargs = dict(
        L4ADAM if name == "L4Adam" else L4MOM, fraction=float(np.float32(0.15))
    )
    assert_records_close(records, reference_run(problem, 20, **kwargs), tf.float32)


@pytest.mark.eager
@pytest.mark.parametrize("front", ["v1", "compat"])
@pytest.mark.parametrize("indices", [[0, 2, 2], (3, 0, 1)], ids=["list", "tuple"])
def test_indexed_slices_with_python_list_indices(front, indices):
    init = np.arange(12.0).reshape(4, 3) / 10.0
    values = np.random.default_rng(0).normal(size=(3, 3))
    dense = np.zeros_like(init)
    np.add.at(dense, list(indices), values)
    results = []
    for grad in (tf.IndexedSlices(tf.constant(values), indices), tf.constant(dense)):
        var = tf.Variable(init)
        opt = (L4.L4Adam if front == "v1" else L4.compat.L4Adam)()
        for _ in range(3):
            opt.apply_gradients([(grad, var)], loss=tf.constant(2.0, tf.float64))
        results.append(var.numpy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-12)
    assert not np.allclose(results[0], init)


def _accumulated_reference(problem, batches, k, **kwargs):
    """The reference stepping every ``k`` batches with their mean loss and mean
    gradient; the parameters stay put in between."""
    ref = L4Reference(problem.init, **kwargs)
    records, losses, grads = [], [], []
    for bx, by in batches:
        loss, grad = problem.batch(bx, by).numpy_loss_and_grads(ref.params)
        losses.append(loss)
        grads.append(grad)
        if len(losses) == k:
            ref.step(np.mean(losses), [np.mean(g, axis=0) for g in zip(*grads)])
            losses, grads = [], []
        # Before the first step the optimizer's eta and L_min read 0.
        eta, min_loss = (0.0, 0.0) if ref.eta is None else (ref.eta, ref.min_loss)
        records.append(Record([p.copy() for p in ref.params], eta, min_loss))
    return records


def _batches(problem, steps, size=8):
    n = len(problem.x)
    rows = [[(s * size + i) % n for i in range(size)] for s in range(steps)]
    return [(problem.x[r], problem.y[r]) for r in rows]


@pytest.mark.eager
@pytest.mark.parametrize("mode", EAGER_MODES)
@pytest.mark.keras3
def test_gradient_accumulation_steps_use_the_mean_loss(mode):
    problem, k = LeastSquares(), 3
    batches = _batches(problem, 12)

    def train_step(opt, var_list, bx, by):
        with tf.GradientTape() as tape:
            r = tf.matmul(bx, var_list[0]) + var_list[1] - by
            loss = 0.5 * tf.reduce_mean(tf.reduce_sum(r * r, axis=1))
        opt.apply_gradients(zip(tape.gradient(loss, var_list), var_list), loss=loss)

    make_optimizer = lambda: L4.compat.L4Adam(gradient_accumulation_steps=k)  # noqa: E731
    records, opt, _ = run_steps(
        mode, problem.init, make_optimizer, train_step, batches, dtype=tf.float64
    )
    assert int(opt.step_count.numpy()) == len(batches) // k
    alpha = float(np.float32(0.15))
    expected = _accumulated_reference(problem, batches, k, **L4ADAM, fraction=alpha)
    assert_records_close(records, expected, tf.float64)
    # The last batch alone would give another step.
    last = _accumulated_reference(problem, batches, 1, **L4ADAM, fraction=alpha)
    assert not np.allclose(records[k - 1].params[0], last[0].params[0])


@pytest.mark.eager
@pytest.mark.keras3
def test_gradient_accumulation_in_fit():
    problem, k = LeastSquares(), 2
    batches = _batches(problem, 8)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.set_weights(problem.init)
    opt = L4.compat.L4Mom(gradient_accumulation_steps=k)
    model.compile(
        optimizer=opt,
        loss=lambda yt, yp: 0.5 * tf.reduce_sum(tf.square(yp - yt), axis=-1),
    )
    model.fit(
        np.concatenate([b[0] for b in batches]).astype(np.float32),
        np.concatenate([b[1] for b in batches]).astype(np.float32),
        batch_size=8,
        shuffle=False,
        verbose=0,
    )
    expected = _accumulated_reference(
        problem, batches, k, **L4MOM, fraction=float(np.float32(0.15))
    )
    for actual, wanted in zip(model.get_weights(), expected[-1].params):
        np.testing.assert_allclose(actual, wanted, rtol=2e-4, atol=1e-5)
    assert float(opt.effective_learning_rate.numpy()) == pytest.approx(
        expected[-1].eta, rel=2e-4
    )


@pytest.mark.eager
@pytest.mark.keras3
def test_default_names_follow_keras_and_do_not_collide():
    first, second = L4.compat.L4Adam(), L4.compat.L4Adam()
    assert first.name.startswith("l4_adam") and second.name.startswith("l4_adam")
    assert first.name != second.name
    assert L4.compat.L4Mom().name.startswith("l4_mom")
    assert L4.compat.L4Adam(name="mine").name == "mine"
    w = tf.Variable([1.0, 2.0])
    for opt in (first, second):
        opt.build([w])
    paths = [{v.path for v in opt.variables} for opt in (first, second)]
    assert not paths[0] & paths[1]


@pytest.mark.eager
def test_a_checkpoint_written_under_the_old_default_name_still_loads(tmp_path):
    """Before, every L4Adam was named "L4Adam"; checkpoints match by object, not name."""
    problem = LeastSquares()

    def train(opt, var_list, steps):
        for _ in range(steps):
            with tf.GradientTape() as tape:
                loss = problem.tf_loss(var_list)
            grads = tape.gradient(loss, var_list)
            opt.apply_gradients(zip(grads, var_list), loss=loss)

    old_vars, old = (
        [tf.Variable(v) for v in problem.init],
        L4.compat.L4Adam(name="L4Adam"),
    )
    train(old, old_vars, 5)
    path = tf.train.Checkpoint(v=old_vars, optimizer=old).write(str(tmp_path / "old"))
    new_vars, new = [tf.Variable(v) for v in problem.init], L4.compat.L4Adam()
    new.build(new_vars)
    tf.train.Checkpoint(v=new_vars, optimizer=new).read(path).assert_consumed()
    assert int(new.step_count.numpy()) == 5
    train(old, old_vars, 5)
    train(new, new_vars, 5)
    for a, b in zip(new_vars, old_vars):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
