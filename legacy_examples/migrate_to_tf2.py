"""One model, three ways: a TF1 Session, a TF2 custom loop and Keras' model.fit.

The MLP and data of ``mnist_mlp.py`` trained with L4Adam: ``L4.L4Adam`` in a
``tf.compat.v1.Session`` (the legacy code), then ``L4.compat.L4Adam`` in a
``tf.GradientTape`` loop and in ``model.fit`` (the migrated code), on the same
minibatches. The three end at the same weights: migrating keeps the numbers.

    python legacy_examples/migrate_to_tf2.py --epochs 3
"""

import argparse

import keras
import numpy as np
import tensorflow as tf
from mnist_mlp import epoch_batches, initial_weights, load_data, mlp_logits

import L4
import L4.compat


def cross_entropy(labels, logits):
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    )


def train_session(data, init, batches, fraction):
    """The legacy code: placeholders, feed_dict, opt.minimize(loss)."""
    x_train, y_train = data[:2]
    with tf.Graph().as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, x_train.shape[1]])
        labels = tf.compat.v1.placeholder(tf.int64, [None])
        weights = [tf.compat.v1.Variable(w) for w in init]
        loss = cross_entropy(labels, mlp_logits(images, weights))
        train_op = L4.L4Adam(fraction=fraction).minimize(loss)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for batch in batches:
                sess.run(train_op, {images: x_train[batch], labels: y_train[batch]})
            return sess.run(weights)


def train_custom_loop(data, init, batches, fraction):
    """Migrated: variables, a GradientTape, apply_gradients(..., loss=loss)."""
    x_train, y_train = data[:2]
    weights = [tf.Variable(w) for w in init]
    opt = L4.compat.L4Adam(fraction=fraction)

    @tf.function
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            loss = cross_entropy(labels, mlp_logits(images, weights))
        opt.apply_gradients(zip(tape.gradient(loss, weights), weights), loss=loss)

    for batch in batches:
        train_step(x_train[batch], y_train[batch])
    return [w.numpy() for w in weights]


def train_fit(data, init, epochs, fraction, batch_size, seed):
    """Migrated: a Keras model, compile and fit, fed each epoch's permutation in order."""
    x_train, y_train = data[:2]
    model = keras.Sequential(
        [
            keras.Input((x_train.shape[1],)),
            keras.layers.Dense(300, activation="relu"),
            keras.layers.Dense(100, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.set_weights(init)
    model.compile(
        optimizer=L4.compat.L4Adam(fraction=fraction),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = np.concatenate(epoch_batches(len(y_train), batch_size, rng))
        model.fit(
            x_train[order],
            y_train[order],
            batch_size=batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
        )
    return model.get_weights()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="default 3")
    parser.add_argument("--batch-size", type=int, default=64, help="default 64")
    parser.add_argument(
        "--fraction", type=float, default=0.25, help="L4's alpha (default 0.25)"
    )
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    parser.add_argument(
        "--mnist", help="a local mnist.npz; default: scikit-learn's digits"
    )
    args = parser.parse_args(argv)

    data = load_data(args.mnist, args.seed)
    x_train, y_train = data[:2]
    init = initial_weights(x_train.shape[1], args.seed)
    rng = np.random.default_rng(args.seed)
    batches = [
        b
        for _ in range(args.epochs)
        for b in epoch_batches(len(y_train), args.batch_size, rng)
    ]

    results = {
        "TF1 Session": train_session(data, init, batches, args.fraction),
        "TF2 custom loop": train_custom_loop(data, init, batches, args.fraction),
        "Keras model.fit": train_fit(
            data, init, args.epochs, args.fraction, args.batch_size, args.seed
        ),
    }
    reference = results["TF1 Session"]
    print(f"{'front end':<18}{'training loss':>15}{'max rel. difference':>22}")
    for name, weights in results.items():
        loss = float(cross_entropy(y_train, mlp_logits(x_train, weights)))
        difference = max(
            float(np.max(np.abs(w - r)) / (np.max(np.abs(r)) + 1e-12))
            for w, r in zip(weights, reference)
        )
        print(f"{name:<18}{loss:>15.6f}{difference:>22.2e}")
    return results


if __name__ == "__main__":
    main()
