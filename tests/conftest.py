"""Test configuration: TensorFlow's behaviour for this process, and modes.

``--tf-behavior`` (or the ``L4_TF_BEHAVIOR`` environment variable) chooses how
TensorFlow runs in this test process, as legacy code bases set it: ``v2``
(default; graph-mode tests use ``tf.Graph`` contexts), ``v1``
(``tf.compat.v1.disable_v2_behavior()``: ref variables by default) or ``graph``
(``tf.compat.v1.disable_eager_execution()`` only: resource variables). Tests
that need eager execution are deselected under ``v1`` and ``graph``; tests
marked ``graph_process`` (code that starts its own threads, which do not see a
``tf.Graph`` context) run only there, and tests marked ``subprocess`` (they
start processes of their own) only under ``v2``. tox runs all three, one
after the other; ``L4_TF_BEHAVIORS=v1,graph`` (a list) makes the runs of the
other behaviours end at once, without tests.
The CPU is split into two logical devices for tf.distribute's tests.
"""

import os
import sys

import pytest
import tensorflow as tf

sys.path.insert(0, os.path.dirname(__file__))

BEHAVIORS = ("v2", "v1", "graph")
BEHAVIOR = None  # set in pytest_configure


def pytest_addoption(parser):
    parser.addoption(
        "--tf-behavior",
        choices=BEHAVIORS,
        default=os.environ.get("L4_TF_BEHAVIOR", "v2"),
        help="TensorFlow's behaviour for this run (default: $L4_TF_BEHAVIOR or v2)",
    )


def _set_behavior(behavior):
    """Sets TensorFlow up before any test module imports Keras or builds a graph."""
    global BEHAVIOR
    BEHAVIOR = behavior
    # Two logical CPU devices, set before TensorFlow starts: MirroredStrategy
    # runs over them (test_distribute.py); other tests place ops on the first.
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * 2,
    )
    if behavior == "v1":
        tf.compat.v1.disable_v2_behavior()
    elif behavior == "graph":
        tf.compat.v1.disable_eager_execution()


def pytest_configure(config):
    behavior = config.getoption("--tf-behavior")
    wanted = os.environ.get("L4_TF_BEHAVIORS")
    if wanted and behavior not in wanted.split(","):
        pytest.exit(
            f"--tf-behavior={behavior}: not in L4_TF_BEHAVIORS={wanted}", returncode=0
        )
    _set_behavior(behavior)
    if os.environ.get(
        "L4_TEST_DEVICE"
    ) == "GPU" and not tf.config.list_physical_devices("GPU"):
        raise pytest.UsageError(
            "L4_TEST_DEVICE=GPU, but TensorFlow sees no GPU on this machine"
        )
    config.addinivalue_line(
        "markers", "eager: needs eager execution (deselected under v1/graph)"
    )
    config.addinivalue_line(
        "markers",
        "graph_process: needs eager execution disabled process-wide (v1/graph)",
    )
    config.addinivalue_line(
        "markers",
        "subprocess: runs in a process of its own whatever this one's behaviour; v2 only",
    )
    config.addinivalue_line(
        "markers",
        "keras3: states Keras 3's API or behaviour (skipped where TensorFlow's "
        "Keras is Keras 2; test_keras2.py states Keras 2's own)",
    )
    if os.environ.get("L4_TEST_INSTALLED"):
        # tox sets this: the tests must import the installed package, not the
        # source tree next to them.
        import L4

        source_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if os.path.abspath(L4.__file__).startswith(source_root + os.sep + "L4"):
            raise pytest.UsageError(
                f"L4 was imported from the source tree: {L4.__file__}"
            )


def pytest_collection_modifyitems(config, items):
    from L4.compat import tensorflow_keras_is_keras_2

    from harness import EAGER_MODES

    if tensorflow_keras_is_keras_2():
        skip = pytest.mark.skip(
            reason=f"states Keras 3's own API; TensorFlow {tf.__version__}'s Keras "
            "is Keras 2 here"
        )
        for item in items:
            if item.get_closest_marker("keras3"):
                item.add_marker(skip)
    keep, drop = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        mode = params.params.get("mode") if params else None
        needs_eager = (
            item.get_closest_marker("eager")
            or item.get_closest_marker("subprocess")
            or mode in EAGER_MODES
        )
        needs_graph_process = item.get_closest_marker("graph_process")
        runs = not needs_graph_process if BEHAVIOR == "v2" else not needs_eager
        (keep if runs else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
