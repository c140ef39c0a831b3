"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 end where
one process on the whole batch ends, with the same state on both.

Custom loops only: Keras 3.15's ``fit`` under MultiWorkerMirroredStrategy
fails in ``strategy.reduce`` whatever the optimizer (keras-team/keras#20585).
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from data_parallel import STEPS, free_ports, train

WORKER = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "multi_worker_worker.py"
)
TIMEOUT_S = 240


def run_workers(front, name, out_dir):
    ports = ",".join(str(p) for p in free_ports(2))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    workers = [
        subprocess.Popen(
            [sys.executable, WORKER, str(i), ports, str(out_dir), front, name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    try:
        outputs = [w.communicate(timeout=TIMEOUT_S)[0] for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    for w, output in zip(workers, outputs):
        assert w.returncode == 0, output[-3000:]
    return [np.load(out_dir / f"worker{i}.npz") for i in range(2)]


@pytest.mark.subprocess
@pytest.mark.parametrize("front,name", [("v1", "L4Mom"), ("keras", "L4Adam")])
def test_two_workers_follow_one_process_on_the_whole_batch(front, name, tmp_path):
    first, second = run_workers(front, name, tmp_path)
    records, _, _ = train(front, name, tf.distribute.get_strategy(), STEPS)
    params = [first[f"arr_{i}"] for i in range(len(records[-1].params))]
    for key in first.files:
        np.testing.assert_array_equal(second[key], first[key], err_msg=key)
    for actual, expected in zip(params, records[-1].params):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(first["eta"], records[-1].eta, rtol=1e-5)
    assert int(first["skipped"]) == 0
    # One all-reduce more than TensorFlow's own optimizer: the loss.
    assert int(first["plain_ops"]) >= 1
    assert int(first["l4_ops"]) == int(first["plain_ops"]) + 1
