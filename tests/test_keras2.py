"""What only Keras 2 does with L4.compat: ``tf.keras`` of TensorFlow 2.12 to 2.15,
and ``tf_keras`` with ``TF_USE_LEGACY_KERAS=1`` on 2.16 and later (tox: tf212,
tf215, tfkeras). What both Kerases do is tested once, in test_compat.py and
test_distribute.py, which run on the Keras that L4.compat serves."""

import numpy as np
import pytest
import tensorflow as tf

import L4
import L4.compat
from L4.compat import tensorflow_keras_is_keras_2

import digits_mlp
from harness import keras
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


def test_the_keras_2_classes_are_served():
    assert L4.compat.L4Adam.__module__ == "L4.compat.keras2"
    assert isinstance(L4.compat.L4Adam(), keras.optimizers.Optimizer)


def _compiled_digits_model(optimizer):
    return digits_mlp.compile_model(keras, digits_mlp.model(keras), optimizer)


def test_a_v1_optimizer_in_keras_2_fit_points_to_l4_compat():
    """Keras 2 wraps a tf.compat.v1 optimizer, which then gets no loss."""
    problem = LeastSquares()
    model = keras.Sequential(
        [keras.Input((problem.x.shape[1],)), keras.layers.Dense(3)]
    )
    model.compile(optimizer=L4.L4Adam(), loss="mse")
    with pytest.raises(ValueError, match=r"use the `L4.compat` optimizers"):
        model.fit(problem.x, problem.y, batch_size=16, epochs=1, verbose=0)


def test_h5_file_round_trips_and_training_continues_exactly(tmp_path):
    x, y = digits_mlp.data()
    model = _compiled_digits_model(L4.compat.L4Mom(fraction=0.2))
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
    model = _compiled_digits_model(L4.compat.L4Mom(fraction=0.2))
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
