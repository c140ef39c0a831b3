"""Trains an MLP with L4Adam in a tf.compat.v1 Session, as TF1 code bases do.

The model of the original release's MNIST notebook: 784-300-100-10 (ReLU,
Xavier init, zero-initialised output layer), batch 64, placeholders and
feed_dict. Data: MNIST from a local ``mnist.npz`` (the Keras file) given with
``--mnist``, else scikit-learn's 8x8 digits (64 inputs), which ship offline.

    python legacy_examples/mnist_mlp.py --epochs 5
"""

import argparse
import time

import numpy as np
import tensorflow as tf

import L4

tf.compat.v1.disable_v2_behavior()


def load_data(mnist_path, seed):
    """(x_train, y_train, x_test, y_test), inputs in [0, 1] and flattened."""
    if mnist_path:
        with np.load(mnist_path) as data:
            x_train, y_train = data["x_train"], data["y_train"]
            x_test, y_test = data["x_test"], data["y_test"]
        scale = 255.0
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        order = np.random.default_rng(seed).permutation(len(digits.target))
        x, y = digits.images[order], digits.target[order]
        split = len(y) * 4 // 5
        x_train, y_train, x_test, y_test = x[:split], y[:split], x[split:], y[split:]
        scale = 16.0
    flat = lambda x: x.reshape(len(x), -1).astype(np.float32) / scale  # noqa: E731
    return (
        flat(x_train),
        y_train.astype(np.int64),
        flat(x_test),
        y_test.astype(np.int64),
    )


def build_mlp(inputs, sizes=(300, 100), classes=10):
    xavier = tf.compat.v1.glorot_uniform_initializer()
    hidden = inputs
    for i, size in enumerate(sizes):
        w = tf.compat.v1.get_variable(
            f"w{i}", [hidden.shape[1], size], initializer=xavier
        )
        b = tf.compat.v1.get_variable(
            f"b{i}", [size], initializer=tf.compat.v1.zeros_initializer()
        )
        hidden = tf.nn.relu(tf.matmul(hidden, w) + b)
    w = tf.compat.v1.get_variable(
        "w_out",
        [hidden.shape[1], classes],
        initializer=tf.compat.v1.zeros_initializer(),
    )
    b = tf.compat.v1.get_variable(
        "b_out", [classes], initializer=tf.compat.v1.zeros_initializer()
    )
    return tf.matmul(hidden, w) + b


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--epochs", type=int, default=5, help="passes over the training set (default 5)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="default 64")
    parser.add_argument(
        "--fraction", type=float, default=0.15, help="L4's alpha (default 0.15)"
    )
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    parser.add_argument(
        "--mnist", help="path to a local mnist.npz; default: scikit-learn's digits"
    )
    args = parser.parse_args()

    x_train, y_train, x_test, y_test = load_data(args.mnist, args.seed)
    tf.compat.v1.set_random_seed(args.seed)
    images = tf.compat.v1.placeholder(tf.float32, [None, x_train.shape[1]])
    labels = tf.compat.v1.placeholder(tf.int64, [None])
    logits = build_mlp(images)
    loss = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    )
    accuracy = tf.reduce_mean(
        tf.cast(tf.equal(tf.argmax(logits, 1), labels), tf.float32)
    )
    opt = L4.L4Adam(fraction=args.fraction)
    train_op = opt.minimize(loss)

    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        for epoch in range(args.epochs):
            order = rng.permutation(len(y_train))
            for i in range(0, len(order), args.batch_size):
                batch = order[i : i + args.batch_size]
                sess.run(train_op, {images: x_train[batch], labels: y_train[batch]})
            train_loss = sess.run(loss, {images: x_train, labels: y_train})
            test_acc = sess.run(accuracy, {images: x_test, labels: y_test})
            eta = sess.run(opt.effective_learning_rate)
            print(
                f"epoch {epoch + 1}: training loss {train_loss:.4f}, "
                f"test accuracy {test_acc:.4f}, last effective learning rate {eta:.4g}"
            )
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
