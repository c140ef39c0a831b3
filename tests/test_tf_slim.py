"""tf-slim's training helpers drive L4 as they drive any tf.compat.v1 optimizer."""

import glob

import numpy as np
import pytest
import tensorflow as tf

import L4

from harness import (
    assert_records_close,
    make_variables,
    record_session,
    reference_run,
)
from l4_reference import L4ADAM
from problems import LeastSquares

slim = pytest.importorskip("tf_slim", reason="tf-slim is not installed")


def test_create_train_op_follows_the_reference():
    problem = LeastSquares()
    with tf.Graph().as_default():
        var_list = make_variables("graph_resource", problem.init, tf.float64)
        global_step = tf.compat.v1.train.get_or_create_global_step()
        opt = L4.L4Adam()
        # create_train_op calls compute_gradients(loss) then
        # apply_gradients(grads, global_step=...) without the loss.
        train_op = slim.learning.create_train_op(
            problem.tf_loss(var_list), opt, global_step=global_step
        )
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            records = record_session(sess, train_op, opt, var_list, 10)
            assert sess.run(global_step) == 10
    assert_records_close(records, reference_run(problem, 10, **L4ADAM), tf.float64)


@pytest.mark.graph_process  # the Supervisor's threads see no tf.Graph context
def test_learning_train_runs_and_writes_l4_summaries(tmp_path):
    problem = LeastSquares()
    with tf.Graph().as_default():
        var_list = make_variables("graph_default", problem.init, tf.float32)
        loss = problem.tf_loss(var_list)
        train_op = slim.learning.create_train_op(loss, L4.L4Adam())
        final_loss = slim.learning.train(
            train_op,
            str(tmp_path),
            number_of_steps=5,
            save_summaries_secs=600,
            save_interval_secs=0,
            log_every_n_steps=1,
        )
    initial_loss, _ = problem.numpy_loss_and_grads(problem.init)
    assert np.isfinite(final_loss) and final_loss < initial_loss
    tags = set()
    for path in glob.glob(str(tmp_path / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    assert {"L4Adam/effective_learning_rate", "L4Adam/min_loss_estimate"} <= tags
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("-5")
