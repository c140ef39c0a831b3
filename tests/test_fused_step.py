"""The fused step: which variables TensorFlow's Adam kernel updates, and that
every choice (fused, general, no XLA) follows the reference and keeps
checkpoints interchangeable."""

import os

import numpy as np
import pytest
import tensorflow as tf

import L4
import L4.compat
from L4 import execution

from harness import (
    EAGER_MODES,
    assert_records_close,
    make_variables,
    record_session,
    reference_run,
    run,
)
from l4_reference import L4ADAM, L4GENERAL_CUSTOM, L4MOM
from problems import LeastSquares


def _rule(**kwargs):
    return L4.L4General(**kwargs)._rule


@pytest.mark.parametrize(
    "kwargs, dtype, fuse, kind",
    [
        (L4ADAM, tf.float32, True, execution.ADAM),
        (L4ADAM, tf.float64, True, execution.ADAM),
        (L4ADAM, tf.float16, True, execution.GENERAL),  # EMAs in float32
        (L4ADAM, tf.bfloat16, True, execution.GENERAL),
        (L4ADAM, tf.float32, False, execution.GENERAL),  # the step taken by selection
        (L4MOM, tf.float32, True, execution.GENERAL),
        (L4GENERAL_CUSTOM, tf.float32, True, execution.GENERAL),
        # The gradient estimate is not Adam's first moment: no kernel keeps three EMAs.
        (
            dict(L4ADAM, direction_params={"time_scale_grad": 5.0}),
            tf.float32,
            True,
            execution.GENERAL,
        ),
    ],
)
def test_which_variables_the_adam_kernel_updates(kwargs, dtype, fuse, kind):
    kwargs = {k: v for k, v in kwargs.items() if k != "fraction"}
    assert execution.update_kind(_rule(**kwargs), dtype, fuse) == kind


def test_without_xla_every_variable_takes_the_general_path(monkeypatch):
    monkeypatch.setattr(execution, "xla_available", lambda: False)
    assert execution.update_kind(_rule(**L4ADAM), tf.float32) == execution.GENERAL


def _graph_op_types(graph):
    types = {op.type for op in graph.get_operations()}
    for function in graph.as_graph_def().library.function:
        types |= {node.op for node in function.node_def}
    return types


def _xla_functions(graph):
    return [
        f for f in graph.as_graph_def().library.function if f.attr["_XlaMustCompile"].b
    ]


SMALL, LARGE = [3, 2], [128, execution.XLA_MIN_ELEMENTS // 128]


@pytest.mark.parametrize(
    "name, variables, kernels, xla_calls",
    [
        # One XLA call reads all variables that the Adam kernel updates...
        ("L4Adam", [(tf.float32, SMALL)], {"ResourceApplyAdam"}, 1),
        ("L4Adam", [(tf.float64, LARGE)], {"ResourceApplyAdam"}, 1),
        ("L4Adam", [(tf.float16, SMALL)], {"ResourceApplyGradientDescent"}, 0),
        (
            "L4Adam",
            [(tf.float32, SMALL), (tf.float16, LARGE)],
            {"ResourceApplyAdam", "ResourceApplyGradientDescent"},
            2,
        ),
        # ... and one the large ones of the general path; plain ops the rest.
        ("L4Mom", [(tf.float32, SMALL)], {"ResourceApplyGradientDescent"}, 0),
        ("L4Mom", [(tf.float32, LARGE)], {"ResourceApplyGradientDescent"}, 1),
    ],
)
def test_the_kernels_in_a_session_graph(name, variables, kernels, xla_calls):
    with tf.Graph().as_default() as graph:
        var_list = [
            tf.compat.v1.Variable(tf.ones(shape, dtype), use_resource=True)
            for dtype, shape in variables
        ]
        loss = tf.add_n([tf.reduce_sum(tf.cast(v, tf.float32) ** 2) for v in var_list])
        getattr(L4, name)().minimize(loss, var_list=var_list)
        applied = {t for t in _graph_op_types(graph) if t.startswith("ResourceApply")}
        assert applied == kernels
        assert len(_xla_functions(graph)) == xla_calls


@pytest.mark.graph_process
def test_ref_variables_use_the_ref_adam_kernel_where_they_can_branch():
    """Under disable_v2_behavior (control flow v1) ref variables can branch and
    take the Adam kernel; under control flow v2 they cannot be assigned in a
    branch, so the step is taken by selection, on the general path."""
    with tf.Graph().as_default() as graph:
        w = tf.compat.v1.Variable(tf.ones([3, 2]), use_resource=False)
        L4.L4Adam().minimize(tf.reduce_sum(w**2))
        applied = {t for t in _graph_op_types(graph) if t.startswith("Apply")}
    if tf.compat.v1.control_flow_v2_enabled():
        assert applied == {"ApplyGradientDescent"}
    else:
        assert applied == {"ApplyAdam"}


def test_without_xla_a_session_graph_compiles_nothing(monkeypatch):
    monkeypatch.setattr(execution, "xla_available", lambda: False)
    with tf.Graph().as_default() as graph:
        w = tf.compat.v1.Variable(tf.ones([3, 2]), use_resource=True)
        L4.L4Adam().minimize(tf.reduce_sum(w**2))
        assert not _xla_functions(graph)
        assert "ResourceApplyAdam" not in _graph_op_types(graph)


MODES = [
    pytest.param(m, marks=pytest.mark.eager) if m in EAGER_MODES else m
    for m in ("graph_resource", "graph_default", *EAGER_MODES)
]


@pytest.mark.parametrize("xla", [True, False], ids=["xla", "no_xla"])
@pytest.mark.parametrize("name", ["L4Adam", "L4Mom"])
@pytest.mark.parametrize("mode", MODES)
def test_with_and_without_xla_the_numbers_follow_the_reference(
    mode, name, xla, monkeypatch
):
    if not xla:
        monkeypatch.setattr(execution, "xla_available", lambda: False)
    problem = LeastSquares()
    kwargs = L4ADAM if name == "L4Adam" else L4MOM
    for dtype in (tf.float32, tf.float64):
        actual = run(mode, problem, getattr(L4, name), 30, dtype).records
        assert_records_close(actual, reference_run(problem, 30, **kwargs), dtype)


@pytest.mark.eager
@pytest.mark.parametrize("xla", [True, False], ids=["xla", "no_xla"])
@pytest.mark.parametrize("mode", EAGER_MODES)
def test_keras_front_end_with_and_without_xla(mode, xla, monkeypatch):
    if not xla:
        monkeypatch.setattr(execution, "xla_available", lambda: False)
    problem = LeastSquares()
    actual = run(
        mode, problem, L4.compat.L4Adam, 30, tf.float64, form="keyword_loss"
    ).records
    kwargs = dict(L4ADAM, fraction=float(np.float32(0.15)))
    assert_records_close(actual, reference_run(problem, 30, **kwargs), tf.float64)


@pytest.mark.parametrize("kind", ["graph_ref", "graph_resource"])
def test_checkpoints_of_the_general_path_restore_into_the_fused_one(
    kind, tmp_path, monkeypatch
):
    """The slots keep their meaning (Adam's m and v): a checkpoint written
    before the fused step (or without XLA) continues exactly with it."""
    problem = LeastSquares()
    path = os.path.join(str(tmp_path), "model.ckpt")

    def train(steps, restore=False):
        with tf.Graph().as_default():
            var_list = make_variables(kind, problem.init, tf.float64)
            opt = L4.L4Adam()
            train_op = opt.minimize(problem.tf_loss(var_list), var_list=var_list)
            saver = tf.compat.v1.train.Saver()
            with tf.compat.v1.Session() as sess:
                if restore:
                    saver.restore(sess, path)
                else:
                    sess.run(tf.compat.v1.global_variables_initializer())
                records = record_session(sess, train_op, opt, var_list, steps)
                saver.save(sess, path)
            return records

    with monkeypatch.context() as patch:
        patch.setattr(execution, "xla_available", lambda: False)
        first = train(10)
    second = train(10, restore=True)
    expected = reference_run(problem, 20, **L4ADAM)
    assert_records_close(first + second, expected, tf.float64)


@pytest.mark.parametrize(
    "make_optimizer, kwargs",
    [
        (L4.L4Adam, L4ADAM),
        (L4.L4Mom, L4MOM),
        (lambda: L4.L4General(**L4GENERAL_CUSTOM), L4GENERAL_CUSTOM),
    ],
    ids=["L4Adam", "L4Mom", "L4General_custom"],
)
@pytest.mark.parametrize("mode", MODES)
def test_large_variables_read_by_xla_follow_the_reference(mode, make_optimizer, kwargs):
    problem = LeastSquares(n=64, d=128, k=execution.XLA_MIN_ELEMENTS // 128)
    for dtype in (tf.float32, tf.float64):
        actual = run(mode, problem, make_optimizer, 15, dtype).records
        assert_records_close(actual, reference_run(problem, 15, **kwargs), dtype)
