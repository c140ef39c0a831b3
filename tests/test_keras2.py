"""L4.compat on Keras 2: ``tf.keras`` of TensorFlow 2.12 to 2.15, and ``tf_keras``
with ``TF_USE_LEGACY_KERAS=1`` on 2.16 and later (tox: tf212, tf215, tfkeras)."""

import numpy as np
import pytest
import tensorflow as tf

import L4
from L4.compat import tensorflow_keras_is_keras_2

import digits_mlp
from data_parallel import (
    SAME_TRAJECTORY,
    STEPS,
    assert_copies_identical,
    mirrored,
    train,
)
from harness import (
    EAGER_MODES,
    Record,
    RecordStepsMixin,
    assert_records_close,
    reference_run,
    run,
)
from l4_reference import L4ADAM, L4GENERAL_CUSTOM, L4MOM, L4Reference
from problems import LeastSquares

pytestmark = [
    pytest.mark.eager,
    pytest.mark.skipif(
        not tensorflow_keras_is_keras_2(),
        reason=f"TensorFlow {tf.__version__}'s Keras is Keras 3 here "
        "(TF_USE_LEGACY_KERAS is not set); tox's tf212, tf215 and tfkeras "
        "environments have Keras 2",
    ),
]

if tensorflow_keras_is_keras_2():
    import L4.compat

    keras = tf.keras


def _alpha(kwargs):
    # Keras holds alpha in a float32 variable.
    return dict(kwargs, fraction=float(np.float32(kwargs.get("fraction", 0.15))))


OPTIMIZERS = {
    "L4Adam": (lambda: L4.compat.L4Adam(), L4ADAM),
    "L4Mom": (lambda: L4.compat.L4Mom(), L4MOM),
    "L4General_custom": (
        lambda: L4.compat.L4General(**L4GENERAL_CUSTOM),
        L4GENERAL_CUSTOM,
    ),
}


def test_the_keras_2_classes_are_served():
    assert L4.compat.L4Adam.__module__ == "L4.compat.keras2"
    assert isinstance(L4.compat.L4Adam(), keras.optimizers.Optimizer)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("mode", EAGER_MODES)
def test_custom_loop_follows_reference(mode, optimizer, dtype):
    make, kwargs = OPTIMIZERS[optimizer]
    problem = LeastSquares()
    actual, _ = run(mode, problem, make, 30, dtype, form="keyword_loss")
    assert_records_close(actual, reference_run(problem, 30, **_alpha(kwargs)), dtype)


def half_squared_error(y_true, y_pred):
    return 0.5 * tf.reduce_sum(tf.square(y_pred - y_true), axis=-1)


class RecordSteps(
    RecordStepsMixin,
    keras.callbacks.Callback if tensorflow_keras_is_keras_2() else object,
):
    """Records the weights, eta and L_min after every batch."""


def _model(problem):
    model = keras.Sequential(
        [keras.Input((problem.x.shape[1],)), keras.layers.Dense(3)]
    )
    model.set_weights(problem.init)
    return model


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("optimizer", ["L4Adam", "L4Mom"])
def test_fit_follows_reference_with_the_exact_batch_loss(optimizer, jit_compile):
    make, kwargs = OPTIMIZERS[optimizer]
    problem = LeastSquares()
    model = _model(problem)
    model.compile(optimizer=make(), loss=half_squared_error, jit_compile=jit_compile)
    recorder = RecordSteps()
    model.fit(
        problem.x,
        problem.y,
        batch_size=16,
        epochs=10,
        shuffle=False,
        verbose=0,
        callbacks=[recorder],
    )
    ref = L4Reference(problem.init, **_alpha(kwargs))
    expected = []
    for step in range(20):
        rows = slice(16 * (step % 2), 16 * (step % 2) + 16)
        batch = LeastSquares()
        batch.x, batch.y = problem.x[rows], problem.y[rows]
        ref.step(*batch.numpy_loss_and_grads(ref.params))
        expected.append(Record([p.copy() for p in ref.params], ref.eta, ref.min_loss))
    assert_records_close(recorder.records, expected, tf.float32)


def _digits_model(seed=0):
    return digits_mlp.model(keras, seed)


def _compile(model, optimizer):
    return digits_mlp.compile_model(keras, model, optimizer)


@pytest.mark.parametrize("name", ["L4Adam", "L4Mom"])
def test_session_and_keras_2_fit_end_at_the_same_weights(name):
    x, y = digits_mlp.data()
    init = _digits_model().get_weights()
    steps = 100
    with tf.Graph().as_default():
        params = [tf.compat.v1.Variable(w) for w in init]
        hidden = tf.nn.relu(tf.matmul(tf.constant(x), params[0]) + params[1])
        logits = tf.matmul(hidden, params[2]) + params[3]
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.constant(y), logits=logits
            )
        )
        train_op = getattr(L4, name)().minimize(loss, var_list=params)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for _ in range(steps):
                sess.run(train_op)
            session_weights = sess.run(params)
    model = _compile(_digits_model(), getattr(L4.compat, name)())
    model.set_weights(init)
    model.fit(x, y, batch_size=len(x), epochs=steps, shuffle=False, verbose=0)
    for s, f in zip(session_weights, model.get_weights()):
        np.testing.assert_allclose(f, s, rtol=1e-5, atol=1e-6)
    assert not np.allclose(session_weights[0], init[0], rtol=1e-3)  # it trained


def test_saved_model_file_round_trips_and_training_continues_exactly(tmp_path):
    x, y = digits_mlp.data()
    model = _compile(_digits_model(), L4.compat.L4Adam(fraction=0.2))
    model.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    assert type(loaded.optimizer) is L4.compat.L4Adam
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    for m in (model, loaded):
        m.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_restores_mid_training_exactly(tmp_path):
    problem = LeastSquares()

    def train(opt, var_list, steps):
        for _ in range(steps):
            with tf.GradientTape() as tape:
                loss = problem.tf_loss(var_list)
            grads = tape.gradient(loss, var_list)
            opt.apply_gradients(zip(grads, var_list), loss=loss)

    var_list, opt = [tf.Variable(v) for v in problem.init], L4.compat.L4Mom()
    train(opt, var_list, 10)
    path = tf.train.Checkpoint(v=var_list, optimizer=opt).write(str(tmp_path / "c"))
    train(opt, var_list, 10)
    restored_vars, restored = [tf.Variable(v) for v in problem.init], L4.compat.L4Mom()
    restored.build(restored_vars)
    tf.train.Checkpoint(v=restored_vars, optimizer=restored).read(path)
    assert int(restored.step_count.numpy()) == 10
    train(restored, restored_vars, 10)
    for a, b in zip(restored_vars, var_list):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_reduce_lr_on_plateau_and_schedules_act_on_fraction():
    problem = LeastSquares()
    model = _model(problem)
    model.compile(optimizer=L4.compat.L4Adam(), loss=half_squared_error)
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="loss", factor=0.5, patience=0, min_delta=1e9, min_lr=0.0
    )
    history = model.fit(
        problem.x,
        problem.y,
        batch_size=32,
        epochs=3,
        verbose=0,
        callbacks=[plateau, L4.compat.LogL4()],
    )
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.0375)
    etas = history.history["effective_learning_rate"]
    assert len(etas) == 3 and etas[-1] == pytest.approx(
        float(model.optimizer.effective_learning_rate.numpy())
    )
    schedule = keras.optimizers.schedules.ExponentialDecay(0.3, 5, 0.5)
    opt = L4.compat.L4Mom(fraction=schedule)
    clone = type(opt).from_config(opt.get_config())
    assert clone.get_config() == opt.get_config()


def test_apply_gradients_without_a_loss_says_how_to_pass_it():
    w = tf.Variable([1.0, 2.0])
    with pytest.raises(ValueError, match=r"loss=loss\)"):
        L4.compat.L4Adam().apply_gradients([(tf.constant([1.0, 1.0]), w)])


def test_mixed_float16_uses_the_true_loss():
    digits_mlp.assert_mixed_precision_uses_the_true_loss(
        *digits_mlp.fit_float32_and_mixed_float16(keras, L4.compat.L4Adam)
    )


def test_a_v1_optimizer_in_keras_2_fit_points_to_l4_compat():
    """Keras 2 wraps a tf.compat.v1 optimizer, which then gets no loss."""
    problem = LeastSquares()
    model = _model(problem)
    model.compile(optimizer=L4.L4Adam(), loss=half_squared_error)
    with pytest.raises(ValueError, match=r"use the `L4.compat` optimizers"):
        model.fit(problem.x, problem.y, batch_size=16, epochs=1, verbose=0)


@pytest.mark.parametrize("name", ["L4Adam", "L4Mom"])
def test_custom_loop_under_mirrored_strategy_follows_one_device(name):
    one, _, _ = train("keras", name, tf.distribute.get_strategy(), STEPS)
    two, var_list, opt = train("keras", name, mirrored(), STEPS)
    for a, b in zip(two[-1].params, one[-1].params):
        np.testing.assert_allclose(a, b, **SAME_TRAJECTORY)
    np.testing.assert_allclose(two[-1].eta, one[-1].eta, **SAME_TRAJECTORY)
    assert_copies_identical("keras", var_list, opt)


@pytest.mark.parametrize("name", ["L4Adam", "L4Mom"])
def test_fit_under_mirrored_strategy_follows_one_device(name):
    x, y = digits_mlp.data()

    def fit(strategy):
        with strategy.scope():
            model = _compile(_digits_model(), getattr(L4.compat, name)())
        model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
        return model

    one, two = fit(tf.distribute.get_strategy()), fit(mirrored())
    assert int(two.optimizer.step_count.numpy()) == 2 * len(x) // 32
    for a, b in zip(two.get_weights(), one.get_weights()):
        np.testing.assert_allclose(a, b, **SAME_TRAJECTORY)
    assert_copies_identical("keras", two.trainable_variables, two.optimizer)


def test_h5_file_round_trips_and_training_continues_exactly(tmp_path):
    x, y = digits_mlp.data()
    model = _compile(_digits_model(), L4.compat.L4Mom(fraction=0.2))
    model.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0)
    model.save(str(tmp_path / "m.h5"))
    loaded = keras.models.load_model(str(tmp_path / "m.h5"))  # no custom_objects
    assert type(loaded.optimizer) is L4.compat.L4Mom
    assert int(loaded.optimizer.step_count.numpy()) == 8
    for m in (model, loaded):
        m.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_saved_model_directory_restores_the_optimizer_as_keras_2_does(tmp_path):
    # Keras 2 restores no optimizer state from a SavedModel directory (its
    # own Adam restarts at iteration 0 too); the optimizer and its config are.
    x, y = digits_mlp.data()
    model = _compile(_digits_model(), L4.compat.L4Mom(fraction=0.2))
    model.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0)
    model.save(str(tmp_path / "saved_model"))
    loaded = keras.models.load_model(str(tmp_path / "saved_model"))
    assert type(loaded.optimizer) is L4.compat.L4Mom
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    loaded.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    assert (
        int(loaded.optimizer.step_count.numpy())
        == int(loaded.optimizer.iterations.numpy())
        == 4
    )
