"""One worker of test_multi_worker.py.

    python multi_worker_worker.py INDEX PORT0,PORT1 OUT_DIR FRONT NAME

Joins a two-worker `MultiWorkerMirroredStrategy` on 127.0.0.1, trains
data_parallel's problem on its half of every batch, and writes its final
variables, eta and the collective ops counted in its traced step (L4's and
a plain optimizer's) to OUT_DIR/worker{INDEX}.npz.
"""

import json
import os
import sys

index, ports, out_dir, front, name = sys.argv[1:]
os.environ["TF_CONFIG"] = json.dumps(
    {
        "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports.split(",")]},
        "task": {"type": "worker", "index": int(index)},
    }
)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from data_parallel import (  # noqa: E402
    OPTIMIZERS,
    PLAIN_OPTIMIZERS,
    STEPS,
    collective_ops,
    traced_step,
    train,
)

strategy = tf.distribute.MultiWorkerMirroredStrategy()
records, _, opt = train(front, name, strategy, STEPS)
x = tf.ones([2, 4])
np.savez(
    os.path.join(out_dir, f"worker{index}.npz"),
    *records[-1].params,
    eta=records[-1].eta,
    skipped=int(opt.skipped_steps.numpy()),
    l4_ops=len(
        collective_ops(traced_step(strategy, front, OPTIMIZERS[front, name]), x)
    ),
    plain_ops=len(
        collective_ops(traced_step(strategy, front, PLAIN_OPTIMIZERS[front]), x)
    ),
)
