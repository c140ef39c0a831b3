"""The small digits classifier the Keras tests share, built with the Keras
module they pass: Keras 3's ``keras`` or Keras 2's ``tf.keras``."""

import numpy as np


def data(n=256):
    """(x, y): the first ``n`` (`None`: all) of scikit-learn's 8x8 digits, in [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data[:n] / 16.0).astype(np.float32)
    return x, digits.target[:n].astype(np.int64)


def model(keras, seed=0, float32_logits=False):
    """An MLP 64-32-10 with seeded weights; ``float32_logits`` adds a float32
    output layer, as mixed precision needs."""
    keras.utils.set_random_seed(seed)
    layers = [
        keras.Input((64,)),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10),
    ]
    if float32_logits:
        layers.append(keras.layers.Activation("linear", dtype="float32"))
    return keras.Sequential(layers)


def compile_model(keras, net, optimizer):
    net.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return net


def fit_float32_and_mixed_float16(keras, make_optimizer, check=lambda net: None):
    """Trains the same model under each policy; returns their (weights, eta).

    ``check(net)`` sees each compiled model before it trains.
    """
    x, y = data()
    results = {}
    for policy in ("float32", "mixed_float16"):
        keras.mixed_precision.set_global_policy(policy)
        try:
            net = compile_model(
                keras, model(keras, float32_logits=True), make_optimizer()
            )
            check(net)
            net.fit(x, y, batch_size=len(x), epochs=20, shuffle=False, verbose=0)
            inner = getattr(net.optimizer, "inner_optimizer", net.optimizer)
            results[policy] = (
                net.get_weights(),
                float(inner.effective_learning_rate.numpy()),
            )
        finally:
            keras.mixed_precision.set_global_policy("float32")
    return results["float32"], results["mixed_float16"]


def assert_mixed_precision_uses_the_true_loss(float32, mixed_float16):
    (w32, eta32), (w16, eta16) = float32, mixed_float16
    # A loss scaled by 2**15 would make eta 32768 times too large.
    assert abs(eta16 - eta32) <= 2e-2 * abs(eta32), (eta16, eta32)
    flat16, flat32 = (np.concatenate([w.ravel() for w in ws]) for ws in (w16, w32))
    assert np.linalg.norm(flat16 - flat32) <= 1e-2 * np.linalg.norm(flat32)
