"""Models and data for the benchmarks, built from plain variables."""

import os
import sys

import numpy as np
import tensorflow as tf

sys.path.insert(
    0,
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "legacy_examples"
    ),
)
from mnist_mlp import initial_weights  # noqa: E402


def mlp_weights(inputs=784, seed=0):
    """The main example's MLP inputs-300-100-10: Xavier init, a zero output layer."""
    return initial_weights(inputs, seed)


def wide_mlp_weights(seed=0):
    """MLP 784-2048-2048-10 (5.8M parameters), Xavier init: the optimizer is a
    large part of each step."""
    rng = np.random.default_rng(seed)
    sizes = (784, 2048, 2048, 10)
    weights = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        weights += [
            rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32),
            np.zeros(fan_out, np.float32),
        ]
    return weights


def deep_weights(tensors=200, width=32, seed=0):
    """``tensors / 2`` dense layers of ``width`` units: many small variables."""
    rng = np.random.default_rng(seed)
    weights = []
    for _ in range(tensors // 2):
        weights += [
            rng.normal(0, 1 / np.sqrt(width), (width, width)).astype(np.float32),
            np.zeros(width, np.float32),
        ]
    return weights


def wide_weights(parameters, inputs=100, seed=0):
    """One dense layer with about ``parameters`` weights (for the scaling study)."""
    rng = np.random.default_rng(seed)
    units = max(1, parameters // inputs)
    return [rng.normal(0, 1 / np.sqrt(inputs), (inputs, units)).astype(np.float32)]


def dense_stack(x, weights, final_activation=False):
    """ReLU dense layers from (kernel, bias) pairs, or one kernel."""
    pairs = (
        list(zip(weights[::2], weights[1::2]))
        if len(weights) > 1
        else [(weights[0], None)]
    )
    for i, (w, b) in enumerate(pairs):
        x = tf.matmul(x, w) + (b if b is not None else 0.0)
        if i < len(pairs) - 1 or final_activation:
            x = tf.nn.relu(x)
    return x


def keras_dense_stack(weights):
    """The Keras model that computes `dense_stack` with ``weights``."""
    import keras

    pairs = len(weights) // 2 if len(weights) > 1 else 1
    layers = [keras.Input((weights[0].shape[0],))]
    for i in range(pairs):
        last = i == pairs - 1
        layers.append(
            keras.layers.Dense(
                weights[2 * i].shape[1],
                activation=None if last else "relu",
                use_bias=len(weights) > 1,
            )
        )
    model = keras.Sequential(layers)
    model.set_weights(weights)
    return model


def classification_loss(logits, labels):
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    )


def regression_loss(outputs):
    return 0.5 * tf.reduce_mean(tf.square(outputs))


def random_batch(inputs, batch=64, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.random((batch, inputs), dtype=np.float32),
        rng.integers(0, classes, batch).astype(np.int64),
    )
