"""Hard cases and bad input, in both front ends: nothing crashes, nothing is silently corrupted."""

import numpy as np
import pytest
import tensorflow as tf

import L4
import L4.compat

from harness import (
    GRAPH_MODES,
    Record,
    RecordSteps,
    Run,
    apply_step,
    assert_records_close,
    keras,
    make_variables,
    reference_run,
    run_steps,
)
from l4_reference import L4ADAM, L4MOM, L4Reference
from problems import LeastSquares

# Front end and mode: the tf.compat.v1 optimizers in a Session or eagerly, and
# the Keras ones in custom loops (eager, tf.function, XLA) and in model.fit.
RUNS = [
    ("v1", "graph_ref"),
    ("v1", "graph_resource"),
    ("v1", "eager"),
    ("v1", "function"),
    ("v1", "xla"),
    ("compat", "eager"),
    ("compat", "function"),
    ("compat", "xla"),
    ("compat", "fit"),
]
RUN_IDS = [f"{front}-{mode}" for front, mode in RUNS]


def _needs_eager(mode):
    return pytest.mark.eager if mode not in GRAPH_MODES else ()


def batches_of(problem, steps, batch_size=8, poison=None, value=np.nan):
    """``steps`` (x, y) batches cycling through ``problem``'s data; batch
    ``poison`` gets one ``value`` in its inputs."""
    n = len(problem.x)
    out = []
    for step in range(steps):
        rows = [(step * batch_size + i) % n for i in range(batch_size)]
        x, y = problem.x[rows].copy(), problem.y[rows].copy()
        if step == poison:
            x[0, 0] = value
        out.append((x, y))
    return out


def _lsq_loss(x, y, w, b):
    r = tf.matmul(x, w) + b - y
    return 0.5 * tf.reduce_mean(tf.reduce_sum(r * r, axis=1))


def run_batches(
    front, mode, make_optimizer, init, batches, dtype=tf.float64, shift=0.0
):
    """Trains least squares (minus ``shift``) on ``batches``; returns the `Run`."""
    if mode == "fit":
        return _fit(make_optimizer, init, batches, dtype, shift)
    form = "minimize" if front == "v1" else "keyword_loss"

    def train_step(opt, var_list, x, y):
        loss_fn = lambda: _lsq_loss(x, y, *var_list) - shift  # noqa: E731
        return apply_step(opt, loss_fn, var_list, form)

    return run_steps(mode, init, make_optimizer, train_step, batches, dtype=dtype)


def _fit(make_optimizer, init, batches, dtype, shift):
    """`run_batches` in ``model.fit``, a batch a step."""
    opt = make_optimizer()
    model = keras.Sequential(
        [
            keras.Input((init[0].shape[0],), dtype=dtype.name),
            keras.layers.Dense(init[0].shape[1], dtype=dtype.name),
        ]
    )
    model.set_weights(init)
    model.compile(
        optimizer=opt,
        loss=lambda yt, yp: 0.5 * tf.reduce_sum(tf.square(yp - yt), axis=-1) - shift,
    )
    recorder = RecordSteps()
    model.fit(
        np.concatenate([bx for bx, _ in batches]),
        np.concatenate([by for _, by in batches]),
        batch_size=len(batches[0][0]),
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[recorder],
    )
    return Run(recorder.records, opt, int(opt.skipped_steps.numpy()))


def _dtype(mode):
    # Keras computes losses in floatx (float32), so model.fit runs in float32.
    return tf.float32 if mode == "fit" else tf.float64


def _front(front, name):
    module = L4 if front == "v1" else L4.compat
    return getattr(module, name)


def _keras_alpha(kwargs, front):
    if front == "compat":  # Keras holds alpha in float32
        return dict(kwargs, fraction=float(np.float32(kwargs.get("fraction", 0.15))))
    return kwargs


# -- Non-finite loss or gradients --------------------------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize(
    "front, mode",
    [pytest.param(*r, marks=_needs_eager(r[1])) for r in RUNS],
    ids=RUN_IDS,
)
def test_one_bad_batch_in_50_is_skipped_and_counted(front, mode, value):
    problem = LeastSquares(n=40)
    batches = batches_of(problem, 50, poison=20, value=value)
    dtype = _dtype(mode)
    actual, _, skipped = run_batches(
        front, mode, _front(front, "L4Adam"), problem.init, batches, dtype
    )
    assert skipped == 1
    expected = reference_run(
        problem, 50, batches=batches, skip={20}, **_keras_alpha(L4ADAM, front)
    )
    assert_records_close(actual, expected, dtype)
    assert all(np.isfinite(p).all() for p in actual[-1].params)


# -- Negative losses ---------------------------------------------------------


@pytest.mark.parametrize(
    "front, mode",
    [pytest.param(*r, marks=_needs_eager(r[1])) for r in RUNS],
    ids=RUN_IDS,
)
def test_a_declared_lower_bound_makes_a_negative_loss_work(front, mode):
    """Training on L - 5 with loss_lower_bound=-5 is training on L."""
    problem = LeastSquares(n=40)
    batches = batches_of(problem, 20)
    make = lambda: _front(front, "L4Mom")(loss_lower_bound=-5.0)  # noqa: E731
    dtype = _dtype(mode)
    actual, _, skipped = run_batches(
        front, mode, make, problem.init, batches, dtype, shift=5.0
    )
    expected = reference_run(problem, 20, batches=batches, **_keras_alpha(L4MOM, front))
    # L_min is reported in the loss' own units: the shifted one.
    expected = [Record(r.params, r.eta, r.min_loss - 5.0) for r in expected]
    assert skipped == 0
    assert_records_close(actual, expected, dtype)


@pytest.mark.parametrize(
    "front, mode",
    [pytest.param(*r, marks=_needs_eager(r[1])) for r in RUNS if r[1] != "xla"],
    ids=[i for i in RUN_IDS if "xla" not in i],
)
def test_a_loss_below_the_bound_is_a_clear_error(front, mode):
    problem = LeastSquares(n=40)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"loss_lower_bound=0\.0.*L4Adam\(loss_lower_bound=-1\.0\)",
    ):
        run_batches(
            front,
            mode,
            _front(front, "L4Adam"),
            problem.init,
            batches_of(problem, 3),
            shift=100.0,
        )


@pytest.mark.eager
def test_under_xla_a_loss_below_the_bound_skips_the_step():
    """XLA drops assertions; the step is skipped and counted rather than taken."""
    problem = LeastSquares(n=40)
    records, _, skipped = run_batches(
        "compat",
        "xla",
        L4.compat.L4Adam,
        problem.init,
        batches_of(problem, 3),
        shift=100.0,
    )
    assert skipped == 3
    for a, b in zip(records[-1].params, problem.init):
        np.testing.assert_array_equal(a, b)


# -- Sparse gradients --------------------------------------------------------


def _embedding_losses(table, ids, one_hot):
    """The same loss through tf.gather (sparse gradient) and a one-hot matmul (dense)."""
    targets = tf.constant(
        np.linspace(-1.0, 1.0, 3 * len(IDS)).reshape(len(IDS), 3), table.dtype
    )
    sparse = tf.reduce_mean(tf.square(tf.gather(table, ids) - targets))
    dense = tf.reduce_mean(tf.square(tf.matmul(one_hot, table) - targets))
    return sparse, dense


IDS = np.array([1, 3, 3, 7, 1, 1, 9])  # repeated indices


@pytest.mark.parametrize("kind", ["graph_ref", "graph_resource"])
@pytest.mark.parametrize("name", ["L4Adam", "L4Mom"])
def test_sparse_gradients_equal_dense_ones_in_graph_mode(kind, name):
    init = np.random.default_rng(0).normal(size=(10, 3))
    results = []
    for use_sparse in (True, False):
        with tf.Graph().as_default():
            (table,) = make_variables(kind, [init], tf.float64)
            one_hot = tf.one_hot(IDS, 10, dtype=tf.float64)
            sparse, dense = _embedding_losses(table, tf.constant(IDS), one_hot)
            loss = sparse if use_sparse else dense
            if use_sparse:
                assert isinstance(
                    tf.compat.v1.gradients(loss, [table])[0], tf.IndexedSlices
                )
            train_op = getattr(L4, name)().minimize(loss)
            with tf.compat.v1.Session() as sess:
                sess.run(tf.compat.v1.global_variables_initializer())
                for _ in range(20):
                    sess.run(train_op)
                results.append(sess.run(table))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-12, atol=1e-14)
    assert not np.allclose(results[0], init)


@pytest.mark.eager
@pytest.mark.parametrize("front", ["v1", "compat"])
def test_sparse_gradients_equal_dense_ones_eagerly(front):
    init = np.random.default_rng(0).normal(size=(10, 3))
    one_hot = tf.one_hot(IDS, 10, dtype=tf.float64)

    def train(index):  # 0: through tf.gather, 1: through the one-hot matmul
        table, opt = tf.Variable(init), _front(front, "L4Adam")()

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = _embedding_losses(table, tf.constant(IDS), one_hot)[index]
            (grad,) = tape.gradient(loss, [table])
            assert isinstance(grad, tf.IndexedSlices) == (index == 0)
            opt.apply_gradients([(grad, table)], loss=loss)

        for _ in range(20):
            step()
        return table.numpy()

    np.testing.assert_allclose(train(0), train(1), rtol=1e-12, atol=1e-14)


@pytest.mark.eager
def test_keras_embedding_trains_like_its_dense_twin():
    init = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    ids = np.tile(IDS, 4).reshape(-1, 1)
    targets = np.random.default_rng(1).normal(size=(len(ids), 1, 3)).astype(np.float32)
    embedded = keras.Sequential(
        [keras.Input((1,), dtype="int32"), keras.layers.Embedding(10, 3)]
    )
    dense = keras.Sequential(
        [keras.Input((1, 10)), keras.layers.Dense(3, use_bias=False)]
    )
    results = []
    for model, inputs in ((embedded, ids), (dense, np.eye(10, dtype=np.float32)[ids])):
        model.set_weights([init])
        model.compile(optimizer=L4.compat.L4Adam(), loss="mse")
        model.fit(
            inputs, targets, batch_size=len(ids), epochs=15, shuffle=False, verbose=0
        )
        results.append(model.get_weights()[0])
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)


# -- Dtypes ------------------------------------------------------------------

DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]
DTYPE_RTOL = {tf.float16: 2e-2, tf.bfloat16: 1e-1, tf.float32: 1e-3, tf.float64: 1e-3}


def _mixed_problem():
    rng = np.random.default_rng(2)
    targets = [rng.normal(size=(4,)) for _ in DTYPES]
    init = [rng.normal(size=(4,)) for _ in DTYPES]
    scales = [1.0, 2.0, 0.5, 1.5]
    return targets, init, scales


def _mixed_loss(var_list, targets, scales):
    return tf.add_n(
        [
            s * 0.5 * tf.reduce_sum(tf.square(tf.cast(v, tf.float64) - t))
            for v, t, s in zip(var_list, targets, scales)
        ]
    )


def _mixed_reference(init, targets, scales, steps, **kwargs):
    ref = L4Reference(init, **kwargs)
    for _ in range(steps):
        grads = [s * (p - t) for p, t, s in zip(ref.params, targets, scales)]
        loss = sum(
            s * 0.5 * np.sum((p - t) ** 2)
            for p, t, s in zip(ref.params, targets, scales)
        )
        ref.step(loss, grads)
    return ref.params


@pytest.mark.parametrize(
    "front, mode",
    [
        ("v1", "graph_resource"),
        pytest.param("v1", "eager", marks=pytest.mark.eager),
        pytest.param("compat", "eager", marks=pytest.mark.eager),
        pytest.param("compat", "function", marks=pytest.mark.eager),
    ],
    ids=["v1-graph", "v1-eager", "compat-eager", "compat-function"],
)
def test_mixed_dtypes_in_one_model(front, mode):
    targets, init, scales = _mixed_problem()
    steps = 10
    opt = _front(front, "L4Adam")()
    if mode == "graph_resource":
        with tf.Graph().as_default():
            var_list = [
                tf.compat.v1.Variable(tf.constant(v, d), use_resource=True)
                for v, d in zip(init, DTYPES)
            ]
            train_op = opt.minimize(_mixed_loss(var_list, targets, scales))
            with tf.compat.v1.Session() as sess:
                sess.run(tf.compat.v1.global_variables_initializer())
                for _ in range(steps):
                    sess.run(train_op)
                values = sess.run(var_list)
                slot_dtypes = [opt.get_slot(v, "m").dtype.base_dtype for v in var_list]
                eta_dtype = opt.effective_learning_rate.dtype.base_dtype
    else:
        var_list = [tf.Variable(tf.constant(v, d)) for v, d in zip(init, DTYPES)]

        def step():
            with tf.GradientTape() as tape:
                loss = _mixed_loss(var_list, targets, scales)
            opt.apply_gradients(zip(tape.gradient(loss, var_list), var_list), loss=loss)

        if mode == "function":
            step = tf.function(step)
        for _ in range(steps):
            step()
        values = [v.numpy() for v in var_list]
        slot_dtypes = (
            [opt.get_slot(v, "m").dtype for v in var_list]
            if front == "v1"
            else [tf.as_dtype(m[0].dtype) for m in opt._moments]
        )
        eta_dtype = tf.as_dtype(opt.effective_learning_rate.dtype)
    # Half-precision variables keep their EMAs in float32.
    assert slot_dtypes == [tf.float32, tf.float32, tf.float32, tf.float64]
    assert eta_dtype == tf.float64  # the scalars take the widest dtype
    expected = _mixed_reference(
        init, targets, scales, steps, **_keras_alpha(L4ADAM, front)
    )
    for value, exp, dtype in zip(values, expected, DTYPES):
        assert value.dtype == dtype.as_numpy_dtype
        np.testing.assert_allclose(
            np.asarray(value, np.float64),
            exp,
            rtol=DTYPE_RTOL[dtype],
            atol=DTYPE_RTOL[dtype],
            err_msg=dtype.name,
        )


# -- Mixed precision ---------------------------------------------------------


@pytest.mark.parametrize("loss_scale", [1024.0, "dynamic"])
def test_tf_compat_v1_loss_scale_wrapper_uses_the_true_loss(loss_scale):
    problem = LeastSquares()
    results = []
    for wrap in (False, True):
        with tf.Graph().as_default():
            var_list = make_variables("graph_resource", problem.init, tf.float32)
            opt = L4.L4Adam()
            outer = (
                tf.compat.v1.mixed_precision.MixedPrecisionLossScaleOptimizer(
                    opt, loss_scale
                )
                if wrap
                else opt
            )
            train_op = outer.minimize(problem.tf_loss(var_list), var_list=var_list)
            with tf.compat.v1.Session() as sess:
                sess.run(tf.compat.v1.global_variables_initializer())
                for _ in range(20):
                    sess.run(train_op)
                results.append(sess.run([var_list, opt.effective_learning_rate]))
    (plain, eta_plain), (wrapped, eta_wrapped) = results
    assert eta_wrapped == pytest.approx(eta_plain, rel=1e-6)
    for a, b in zip(wrapped, plain):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# -- Flat regions ------------------------------------------------------------


@pytest.mark.parametrize(
    "front, mode",
    [
        ("v1", "graph_resource"),
        pytest.param("v1", "eager", marks=pytest.mark.eager),
        pytest.param("compat", "function", marks=pytest.mark.eager),
    ],
    ids=["v1-graph", "v1-eager", "compat-function"],
)
@pytest.mark.parametrize("gradient_scale", [0.0, 1e-30, 1e-20])
@pytest.mark.parametrize("name", ["L4Adam", "L4Mom"])
def test_tiny_or_zero_inner_product_keeps_variables_finite(
    front, mode, gradient_scale, name
):
    init = np.array([0.5, -1.0, 2.0], np.float32)

    def loss_of(w):  # a flat region: constant loss, tiny slope
        return 1.0 + gradient_scale * tf.reduce_sum(w)

    opt = _front(front, name)()
    if mode == "graph_resource":
        with tf.Graph().as_default():
            w = tf.compat.v1.Variable(init, use_resource=True)
            train_op = opt.minimize(loss_of(w))
            with tf.compat.v1.Session() as sess:
                sess.run(tf.compat.v1.global_variables_initializer())
                for _ in range(20):
                    sess.run(train_op)
                value, skipped = sess.run([w, opt.skipped_steps])
    else:
        w = tf.Variable(init)

        def step():
            with tf.GradientTape() as tape:
                loss = loss_of(w)
            opt.apply_gradients([(tape.gradient(loss, w), w)], loss=loss)

        if mode == "function":
            step = tf.function(step)
        for _ in range(20):
            step()
        value, skipped = w.numpy(), int(opt.skipped_steps.numpy())
    assert np.isfinite(value).all(), value
    assert skipped == 0
    if gradient_scale == 0.0:
        np.testing.assert_array_equal(value, init)


@pytest.mark.parametrize(
    "front",
    [
        pytest.param("v1", marks=pytest.mark.eager),
        pytest.param("compat", marks=pytest.mark.eager),
    ],
)
def test_the_optional_cap_on_eta(front):
    problem = LeastSquares()
    opt_free = _front(front, "L4Adam")()
    opt_capped = _front(front, "L4Adam")(max_effective_learning_rate=1e-3)
    for opt in (opt_free, opt_capped):
        var_list = [tf.Variable(v) for v in problem.init]
        with tf.GradientTape() as tape:
            loss = problem.tf_loss(var_list)
        opt.apply_gradients(zip(tape.gradient(loss, var_list), var_list), loss=loss)
    assert float(opt_free.effective_learning_rate.numpy()) > 1e-3
    assert float(opt_capped.effective_learning_rate.numpy()) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="max_effective_learning_rate"):
        _front(front, "L4Adam")(max_effective_learning_rate=0.0)


# -- Two optimizers, one model -----------------------------------------------


@pytest.mark.eager
@pytest.mark.parametrize("mode", ["eager", "function"])
def test_two_keras_optimizers_in_one_model_train_independently(mode):
    """A GAN-like model: two L4 optimizers on disjoint layers, each on its own loss."""
    p1, p2 = LeastSquares(seed=5), LeastSquares(seed=6)
    inputs = keras.Input((4,))
    first, second = keras.layers.Dense(3), keras.layers.Dense(3)
    model = keras.Model(inputs, [first(inputs), second(inputs)])
    first.set_weights([w.astype(np.float32) for w in p1.init])
    second.set_weights([w.astype(np.float32) for w in p2.init])
    opt1, opt2 = L4.compat.L4Adam(), L4.compat.L4Mom()

    def step():
        with tf.GradientTape(persistent=True) as tape:
            out1, _ = model(p1.x.astype(np.float32))  # each layer has its own data
            _, out2 = model(p2.x.astype(np.float32))
            loss1 = 0.5 * tf.reduce_mean(tf.reduce_sum(tf.square(out1 - p1.y), axis=1))
            loss2 = 0.5 * tf.reduce_mean(tf.reduce_sum(tf.square(out2 - p2.y), axis=1))
        for opt, layer, loss in ((opt1, first, loss1), (opt2, second, loss2)):
            grads = tape.gradient(loss, layer.trainable_variables)
            opt.apply_gradients(zip(grads, layer.trainable_variables), loss=loss)

    if mode == "function":
        step = tf.function(step)
    for _ in range(15):
        step()
    for problem, layer, kwargs in ((p1, first, L4ADAM), (p2, second, L4MOM)):
        expected = reference_run(problem, 15, **_keras_alpha(kwargs, "compat"))
        for a, b in zip(layer.get_weights(), expected[-1].params):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5)


def test_one_graph_two_sessions_do_not_mix_state():
    problem = LeastSquares()
    with tf.Graph().as_default():
        var_list = make_variables("graph_ref", problem.init, tf.float64)
        opt = L4.L4Adam()
        train_op = opt.minimize(problem.tf_loss(var_list))
        sessions = [tf.compat.v1.Session(), tf.compat.v1.Session()]
        for sess in sessions:
            sess.run(tf.compat.v1.global_variables_initializer())
        for step in range(9):
            for i, sess in enumerate(sessions):
                if i == 0 or step < 4:
                    sess.run(train_op)
        values = [sess.run(var_list) for sess in sessions]
        for sess in sessions:
            sess.close()
    for value, steps in zip(values, (9, 4)):
        expected = reference_run(problem, steps, **L4ADAM)
        for a, b in zip(value, expected[-1].params):
            np.testing.assert_allclose(a, b, rtol=1e-9)


@pytest.mark.eager
@pytest.mark.parametrize("front", ["v1", "compat"])
@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_a_flat_region_does_not_skip_half_precision_steps(front, dtype):
    """Zero gradients make eta huge and the update zero: nothing overflows, nothing is skipped."""
    w = tf.Variable(tf.constant([0.5, -1.0], dtype))
    opt = _front(front, "L4Adam")()
    for _ in range(5):
        opt.apply_gradients([(tf.zeros([2], dtype), w)], loss=tf.constant(1.0))
    assert int(opt.skipped_steps.numpy()) == 0 and int(opt.step_count.numpy()) == 5
    np.testing.assert_array_equal(
        w.numpy(), np.array([0.5, -1.0], dtype.as_numpy_dtype)
    )


# -- Updates that would overflow the variable's dtype -------------------------

# (optimizer, variable dtype, loss dtype, loss): one step moves the variable by
# about alpha * (1 - gamma * gamma0) * L / |grad| = 0.04875 * L / 0.01, beyond
# float16's 65504 for L = 6e4 and beyond float32's 3.4e38 for L = 1e40, while
# eta itself stays finite in the (wider) scalar dtype.
OVERFLOWS = [
    ("L4Mom", tf.float16, tf.float32, 6e4),  # ||v|| from <v, v>
    ("L4Adam", tf.float16, tf.float32, 6e4),  # ||v|| computed
    ("L4Adam", tf.float32, tf.float64, 1e40),  # Adam's analytic bound
]


def _one_step(front, graph, name, dtype, loss_dtype, loss):
    """(w after one step from 1.0 with gradient 0.01, skipped steps, L4's t)."""

    def step(w, opt):
        grad = tf.constant([0.01], dtype)
        return opt.apply_gradients([(grad, w)], loss=tf.constant(loss, loss_dtype))

    if not graph:
        w = tf.Variable(tf.constant([1.0], dtype))
        opt = _front(front, name)()
        step(w, opt)
        return w.numpy(), int(opt.skipped_steps.numpy()), int(opt.step_count.numpy())
    with tf.Graph().as_default():
        w = tf.compat.v1.Variable(tf.constant([1.0], dtype))
        opt = _front(front, name)()
        train_op = step(w, opt)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(train_op)
            return tuple(sess.run([w, opt.skipped_steps, opt.step_count]))


def _overflow_runs():
    fronts = [("v1", True), ("v1", False), ("compat", False)]
    for front, graph in fronts:
        for case in OVERFLOWS:
            marks = () if graph else pytest.mark.eager
            ids = f"{front}-{'graph' if graph else 'eager'}-{case[0]}-{case[1].name}"
            yield pytest.param(front, graph, *case, marks=marks, id=ids)


@pytest.mark.parametrize(
    "front, graph, name, dtype, loss_dtype, loss", list(_overflow_runs())
)
def test_an_update_that_would_overflow_the_variable_is_skipped(
    front, graph, name, dtype, loss_dtype, loss
):
    w, skipped, t = _one_step(front, graph, name, dtype, loss_dtype, loss)
    assert (skipped, t) == (1, 0)
    np.testing.assert_array_equal(w, np.array([1.0], dtype.as_numpy_dtype))
    # A thousand times smaller loss fits: the same step is taken.
    w, skipped, t = _one_step(front, graph, name, dtype, loss_dtype, loss / 1e3)
    assert (skipped, t) == (0, 1)
    assert np.isfinite(w).all() and w[0] < 1.0
