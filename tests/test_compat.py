"""L4.compat in custom loops and model.fit, on the Keras it serves: Keras 3, or
Keras 2 (tox: tf212, tf215, tfkeras). Tests marked keras3 state Keras 3's own
API; test_keras2.py holds what only Keras 2 does."""

import numpy as np
import pytest
import tensorflow as tf

import L4
import L4.compat

import digits_mlp
from harness import (
    EAGER_MODES,
    KERAS_FORMS,
    RecordSteps,
    assert_records_close,
    keras,
    reference_run,
    run,
)
from l4_reference import L4ADAM, L4GENERAL_CUSTOM, L4MOM
from problems import LeastSquares, Logistic

pytestmark = pytest.mark.eager


def keras_alpha(kwargs):
    """The reference's arguments with alpha as Keras holds it: its learning-rate
    variable is float32, so float64 runs see alpha rounded to float32."""
    return dict(kwargs, fraction=float(np.float32(kwargs.get("fraction", 0.15))))


OPTIMIZERS = {
    "L4Adam": (lambda: L4.compat.L4Adam(), keras_alpha(L4ADAM)),
    "L4Mom": (lambda: L4.compat.L4Mom(), keras_alpha(L4MOM)),
    "L4General_custom": (
        lambda: L4.compat.L4General(**L4GENERAL_CUSTOM),
        keras_alpha(L4GENERAL_CUSTOM),
    ),
}


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("mode", EAGER_MODES)
def test_custom_loop_follows_reference(mode, optimizer, dtype):
    make_optimizer, reference_kwargs = OPTIMIZERS[optimizer]
    problem = LeastSquares()
    actual = run(mode, problem, make_optimizer, 50, dtype, form="keyword_loss").records
    assert_records_close(actual, reference_run(problem, 50, **reference_kwargs), dtype)


@pytest.mark.parametrize(
    "form",
    # Keras 2 has neither `apply` nor `scale_loss`.
    [
        f if f == "keyword_loss" else pytest.param(f, marks=pytest.mark.keras3)
        for f in KERAS_FORMS
    ],
)
@pytest.mark.parametrize("mode", EAGER_MODES)
def test_every_keras_calling_form_gives_the_same_numbers(mode, form):
    problem = Logistic()
    actual = run(
        mode, problem, lambda: L4.compat.L4Mom(fraction=0.25), 20, tf.float64, form
    ).records
    expected = reference_run(problem, 20, **keras_alpha(dict(L4MOM, fraction=0.25)))
    assert_records_close(actual, expected, tf.float64)


@pytest.mark.keras3
def test_the_keras_3_classes_are_served():
    """TensorFlow's Keras is Keras 3 here (test_keras2.py covers Keras 2)."""
    assert L4.compat.L4Adam.__module__ == "L4.compat.optimizers"
    assert isinstance(L4.compat.L4Adam(), keras.optimizers.Optimizer)


def test_apply_gradients_without_a_loss_says_how_to_pass_it():
    w = tf.Variable([1.0, 2.0])
    with pytest.raises(ValueError, match=r"loss=loss\)"):
        L4.compat.L4Adam().apply_gradients([(tf.constant([1.0, 1.0]), w)])


def test_the_loss_is_used_for_one_step_only():
    w = tf.Variable([1.0, 2.0])
    opt = L4.compat.L4Adam()
    opt.apply_gradients([(tf.constant([1.0, 1.0]), w)], loss=tf.constant(5.0))
    with pytest.raises(ValueError, match="no loss is known"):
        opt.apply_gradients([(tf.constant([1.0, 1.0]), w)])


# -- model.fit ---------------------------------------------------------------


def half_squared_error(y_true, y_pred):
    """LeastSquares' loss per example; Keras takes the mean over the batch."""
    return 0.5 * tf.reduce_sum(tf.square(y_pred - y_true), axis=-1)


def least_squares_model(problem, dtype="float32"):
    model = keras.Sequential(
        [
            keras.Input((problem.x.shape[1],), dtype=dtype),
            keras.layers.Dense(3, dtype=dtype),
        ]
    )
    model.set_weights(problem.init)
    return model


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("optimizer", ["L4Adam", "L4Mom"])
def test_fit_follows_reference_with_the_exact_batch_loss(optimizer, jit_compile):
    make_optimizer, reference_kwargs = OPTIMIZERS[optimizer]
    problem = LeastSquares()
    model = least_squares_model(problem)
    model.compile(
        optimizer=make_optimizer(), loss=half_squared_error, jit_compile=jit_compile
    )
    recorder = RecordSteps()
    # Two batches an epoch, not shuffled: a running mean of the loss or a
    # loss one step late would change the numbers from the second step on.
    model.fit(
        problem.x,
        problem.y,
        batch_size=16,
        epochs=15,
        shuffle=False,
        verbose=0,
        callbacks=[recorder],
    )

    halves = [problem.x[:16], problem.y[:16]], [problem.x[16:], problem.y[16:]]
    expected = reference_run(
        problem,
        30,
        batches=[halves[step % 2] for step in range(30)],
        **reference_kwargs,
    )
    assert_records_close(recorder.records, expected, tf.float32)


def test_fit_logs_l4_with_the_callback():
    problem = LeastSquares()
    model = least_squares_model(problem)
    model.compile(optimizer=L4.compat.L4Adam(), loss=half_squared_error)
    history = model.fit(
        problem.x,
        problem.y,
        batch_size=32,
        epochs=3,
        verbose=0,
        callbacks=[L4.compat.LogL4()],
    )
    etas, min_losses = (
        history.history["effective_learning_rate"],
        history.history["min_loss"],
    )
    assert len(etas) == 3 and all(e > 0 for e in etas)
    assert etas[-1] == pytest.approx(
        float(model.optimizer.effective_learning_rate.numpy())
    )
    assert min_losses[-1] == pytest.approx(float(model.optimizer.min_loss.numpy()))


# -- fraction is Keras' learning rate ----------------------------------------


def test_learning_rate_is_fraction():
    opt = L4.compat.L4Adam(fraction=0.2)
    assert float(opt.learning_rate.numpy()) == pytest.approx(0.2)
    opt.learning_rate = 0.1
    assert float(opt.fraction.numpy()) == pytest.approx(0.1)


def test_a_schedule_as_fraction_sets_alpha_per_step():
    schedule = tf.keras.optimizers.schedules.ExponentialDecay(
        0.3, decay_steps=5, decay_rate=0.5
    )
    problem = Logistic()
    actual, opt, _ = run(
        "eager",
        problem,
        lambda: L4.compat.L4Mom(fraction=schedule),
        12,
        tf.float64,
        form="keyword_loss",
    )
    # Keras' schedule, evaluated at t as the optimizer does.
    fractions = [float(schedule(step)) for step in range(12)]
    expected = reference_run(problem, 12, fractions=fractions, **L4MOM)
    assert_records_close(actual, expected, tf.float64)


def test_reduce_lr_on_plateau_and_scheduler_act_on_fraction():
    problem = LeastSquares()
    model = least_squares_model(problem)
    model.compile(optimizer=L4.compat.L4Adam(), loss=half_squared_error)
    # An impossible min_delta makes every epoch a plateau.
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="loss", factor=0.5, patience=0, min_delta=1e9, min_lr=0.0
    )
    history = model.fit(
        problem.x, problem.y, batch_size=32, epochs=3, verbose=0, callbacks=[plateau]
    )
    # Epoch 0 improves on infinity; epochs 1 and 2 halve alpha after logging it.
    assert logged_rates(history) == pytest.approx([0.15, 0.15, 0.075])
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.0375)

    scheduler = keras.callbacks.LearningRateScheduler(lambda epoch: 0.1 + 0.05 * epoch)
    history = model.fit(
        problem.x,
        problem.y,
        batch_size=32,
        epochs=3,
        verbose=0,
        callbacks=[scheduler, L4.compat.LogL4()],
    )
    assert logged_rates(history) == pytest.approx([0.1, 0.15, 0.2])
    etas = history.history["effective_learning_rate"]
    assert etas[-1] == pytest.approx(
        float(model.optimizer.effective_learning_rate.numpy())
    )


def logged_rates(history):
    """The learning rate the callbacks log: Keras 2 names it "lr"."""
    logs = history.history
    return logs["learning_rate"] if "learning_rate" in logs else logs["lr"]


def test_eta_is_proportional_to_fraction():
    problem = Logistic()
    runs = [
        run(
            "eager",
            problem,
            lambda f=f: L4.compat.L4Mom(fraction=f),
            1,
            tf.float64,
            "keyword_loss",
        )[0]
        for f in (0.1, 0.3)
    ]
    ratio = float(np.float32(0.3)) / float(np.float32(0.1))  # alpha is held in float32
    assert runs[1][0].eta == pytest.approx(ratio * runs[0][0].eta, rel=1e-12)


# -- State and serialization -------------------------------------------------


@pytest.mark.parametrize(
    "make_optimizer, moments",
    [
        (L4.compat.L4Adam, 2),
        (L4.compat.L4Mom, 1),
        (lambda: L4.compat.L4General(**L4GENERAL_CUSTOM), 3),
    ],
)
@pytest.mark.keras3
def test_equal_emas_are_kept_once(make_optimizer, moments):
    opt = make_optimizer()
    var_list = [tf.Variable(tf.ones([3, 4])), tf.Variable(tf.ones([4]))]
    opt.build(var_list)
    # iteration and learning_rate (Keras'), t, skips, L_min, eta, then the EMAs.
    assert len(opt.variables) == 6 + moments * len(var_list)


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda: L4.compat.L4Adam(
            0.2, 0.8, 0.5, 100.0, 1e-10, {"time_scale_var": 100.0}, clipnorm=1.0
        ),
        lambda: L4.compat.L4Mom(mom_params={"time_momentum": 5.0}, name="mom"),
        lambda: L4.compat.L4General(**L4GENERAL_CUSTOM),
        lambda: L4.compat.L4Adam(
            tf.keras.optimizers.schedules.ExponentialDecay(
                0.3, decay_steps=5, decay_rate=0.5
            )
        ),
    ],
)
def test_config_round_trip(make_optimizer):
    opt = make_optimizer()
    config = opt.get_config()
    clone = type(opt).from_config(config)
    assert clone.get_config() == config
    serialized = keras.optimizers.serialize(opt)
    assert type(keras.optimizers.deserialize(serialized)) is type(opt)


@pytest.mark.keras3
def test_unknown_and_unsupported_arguments_are_rejected():
    with pytest.raises(ValueError, match="not recognized"):
        L4.compat.L4Adam(momentum=0.9)
    with pytest.raises(ValueError, match="weight_decay"):
        L4.compat.L4Adam(weight_decay=1e-4)
    with pytest.raises(
        ValueError, match=r"`fraction` must be in the range \(0.0, inf\]"
    ):
        L4.compat.L4Mom(fraction=-1.0)
    with pytest.raises(ValueError, match=r"`minloss_factor` must be in the range"):
        L4.compat.L4General(minloss_factor=2.0)


def _digits_model(seed=0):
    return digits_mlp.model(keras, seed)


def _compile(model, optimizer):
    return digits_mlp.compile_model(keras, model, optimizer)


def test_keras_file_round_trips_the_optimizer_and_training_continues_exactly(tmp_path):
    x, y = digits_mlp.data()
    model = _compile(_digits_model(), L4.compat.L4Adam(fraction=0.2))
    model.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    assert type(loaded.optimizer) is L4.compat.L4Adam
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for m in (model, loaded):
        m.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_mixed_float16_uses_the_true_loss():
    def wrapped_under_mixed_float16(net):
        if keras.mixed_precision.global_policy().name == "mixed_float16":
            assert type(net.optimizer).__name__.startswith("LossScaleOptimizer")

    digits_mlp.assert_mixed_precision_uses_the_true_loss(
        *digits_mlp.fit_float32_and_mixed_float16(
            keras, L4.compat.L4Adam, check=wrapped_under_mixed_float16
        )
    )


def test_checkpoint_restores_mid_training_exactly(tmp_path):
    x, y = digits_mlp.data()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def make():
        model = _digits_model()
        return model, L4.compat.L4Mom()

    @tf.function
    def train_step(model, opt):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables), loss=loss)

    model, opt = make()
    for _ in range(10):
        train_step(model, opt)
    path = tf.train.Checkpoint(model=model, optimizer=opt).write(str(tmp_path / "ckpt"))
    for _ in range(10):
        train_step(model, opt)

    restored_model, restored_opt = make()
    restored_opt.build(restored_model.trainable_variables)
    tf.train.Checkpoint(model=restored_model, optimizer=restored_opt).read(
        path
    ).assert_consumed()
    assert int(restored_opt.step_count.numpy()) == 10
    train_step2 = tf.function(train_step.python_function)
    for _ in range(10):
        train_step2(restored_model, restored_opt)
    for a, b in zip(restored_model.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


# -- One model, three front ends ---------------------------------------------


def _mlp_logits(x, params):
    w0, b0, w1, b1 = params
    return tf.matmul(tf.nn.relu(tf.matmul(x, w0) + b0), w1) + b1


def _cross_entropy(y, logits):
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    )


@pytest.mark.parametrize("name", ["L4Adam", "L4Mom"])
def test_session_eager_and_fit_end_at_the_same_weights(name):
    x, y = digits_mlp.data()
    init = _digits_model().get_weights()
    steps = 100

    with tf.Graph().as_default():
        params = [tf.compat.v1.Variable(w, use_resource=False) for w in init]
        loss = _cross_entropy(tf.constant(y), _mlp_logits(tf.constant(x), params))
        train_op = getattr(L4, name)().minimize(loss, var_list=params)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for _ in range(steps):
                sess.run(train_op)
            session_weights = sess.run(params)

    params = [tf.Variable(w) for w in init]
    opt = getattr(L4.compat, name)()
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = _cross_entropy(y, _mlp_logits(x, params))
        grads = tape.gradient(loss, params)
        opt.apply_gradients(zip(grads, params), loss=loss)
    eager_weights = [p.numpy() for p in params]

    model = _compile(_digits_model(), getattr(L4.compat, name)())
    model.set_weights(init)
    model.fit(x, y, batch_size=len(x), epochs=steps, shuffle=False, verbose=0)

    for s, e, f in zip(session_weights, eager_weights, model.get_weights()):
        np.testing.assert_allclose(e, s, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(f, s, rtol=1e-5, atol=1e-6)
    assert not np.allclose(session_weights[0], init[0], rtol=1e-3)  # it trained


def test_fit_on_digits_beats_keras_adam_at_its_default_learning_rate():
    x, y = digits_mlp.data(n=None)  # all 1797
    final_loss = {}
    for name, optimizer in [
        ("L4Adam", L4.compat.L4Adam()),
        ("Adam", keras.optimizers.Adam()),
    ]:
        model = _compile(_digits_model(seed=1), optimizer)
        history = model.fit(x, y, batch_size=64, epochs=10, verbose=0, shuffle=True)
        final_loss[name] = history.history["loss"][-1]
    assert final_loss["L4Adam"] < 0.5 * final_loss["Adam"], final_loss
