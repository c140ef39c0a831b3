"""A small CNN trained with tf-slim's create_train_op and learning.train, and L4Adam.

Data: scikit-learn's 8x8 digits. The logdir holds the checkpoints and the
event file with L4's summaries (``effective_learning_rate``,
``min_loss_estimate``), as the original release wrote them.

    python legacy_examples/slim_cnn.py --steps 300 --logdir /tmp/l4_slim
"""

import argparse
import glob
import os
import tempfile

import numpy as np
import tensorflow as tf
import tf_slim as slim

import L4


def load_digits(seed):
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    x = (digits.images[order] / 16.0).astype(np.float32)[..., None]
    y = digits.target[order].astype(np.int64)
    split = len(y) * 4 // 5
    return x[:split], y[:split], x[split:], y[split:]


def cnn(images):
    with slim.arg_scope([slim.conv2d, slim.fully_connected], activation_fn=tf.nn.relu):
        net = slim.conv2d(images, 16, [3, 3], scope="conv1")
        net = slim.max_pool2d(net, [2, 2], scope="pool1")
        net = slim.conv2d(net, 32, [3, 3], scope="conv2")
        net = slim.flatten(net)
        return slim.fully_connected(net, 10, activation_fn=None, scope="logits")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=int, default=300, help="training steps (default 300)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="default 64")
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    parser.add_argument("--logdir", help="default: a new temporary folder")
    args = parser.parse_args(argv)
    logdir = args.logdir or tempfile.mkdtemp(prefix="l4_slim_")

    tf.compat.v1.disable_v2_behavior()
    x_train, y_train, x_test, y_test = load_digits(args.seed)
    tf.compat.v1.set_random_seed(args.seed)
    dataset = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(y_train), seed=args.seed)
        .repeat()
        .batch(args.batch_size)
    )
    images, labels = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
    logits = cnn(images)
    loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
    train_op = slim.learning.create_train_op(loss, L4.L4Adam())
    final_loss = slim.learning.train(
        train_op,
        logdir,
        number_of_steps=args.steps,
        log_every_n_steps=100,
        save_interval_secs=0,
    )

    with tf.Graph().as_default():
        test_images = tf.constant(x_test)
        predictions = tf.argmax(cnn(test_images), 1)
        with tf.compat.v1.Session() as sess:
            tf.compat.v1.train.Saver().restore(sess, tf.train.latest_checkpoint(logdir))
            accuracy = float(np.mean(sess.run(predictions) == y_test))

    tags = set()
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    print(f"final batch loss {final_loss:.4f}, test accuracy {accuracy:.4f}")
    print(f"logdir {logdir}: summaries {', '.join(sorted(tags))}")
    return final_loss, accuracy, tags


if __name__ == "__main__":
    main()
