"""The tf.compat.v1 API of L4.L4*: calling forms, global steps, state, Saver, tf-slim."""

import inspect
import os

import numpy as np
import pytest
import tensorflow as tf

import L4
import L4.compat

from harness import (
    assert_records_close,
    make_variables,
    record,
    record_session,
    reference_run,
)
from l4_reference import L4ADAM, L4GENERAL_CUSTOM, L4MOM
from problems import LeastSquares, Logistic

VARIABLE_KINDS = ["graph_ref", "graph_resource"]


@pytest.mark.parametrize("kind", VARIABLE_KINDS)
def test_minimize_with_the_full_v1_signature(kind):
    problem = LeastSquares()
    with tf.Graph().as_default():
        var_list = make_variables(kind, problem.init, tf.float64)
        global_step = tf.compat.v1.train.create_global_step()
        opt = L4.L4Adam()
        loss = problem.tf_loss(var_list)
        train_op = opt.minimize(
            loss,
            global_step=global_step,
            var_list=var_list,
            gate_gradients=tf.compat.v1.train.Optimizer.GATE_GRAPH,
            aggregation_method=tf.AggregationMethod.ADD_N,
            colocate_gradients_with_ops=True,
            name="train",
            grad_loss=tf.constant(1.0, tf.float64),
        )
        assert train_op.name.startswith("train")
        assert train_op in tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.TRAIN_OP)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            records = record_session(sess, train_op, opt, var_list, 10)
            assert sess.run(global_step) == 10
    assert_records_close(records, reference_run(problem, 10, **L4ADAM), tf.float64)


def _apply_forms(opt, gv, loss, global_step):
    """Each legacy calling form that passes a global step and a name."""
    return {
        "first_release_positional": lambda: opt.apply_gradients(
            gv, loss, global_step, "step"
        ),
        "latest_positional": lambda: opt.apply_gradients(gv, global_step, "step"),
        "latest_keywords": lambda: opt.apply_gradients(
            gv, global_step=global_step, name="step"
        ),
        "loss_keyword": lambda: opt.apply_gradients(
            gv, loss=loss, global_step=global_step, name="step"
        ),
    }


@pytest.mark.parametrize(
    "form",
    [
        "first_release_positional",
        "latest_positional",
        "latest_keywords",
        "loss_keyword",
    ],
)
@pytest.mark.parametrize("kind", VARIABLE_KINDS)
def test_apply_gradients_legacy_forms(kind, form):
    problem = Logistic()
    with tf.Graph().as_default():
        var_list = make_variables(kind, problem.init, tf.float64)
        global_step = tf.compat.v1.Variable(
            0, dtype=tf.int64, trainable=False, use_resource=kind == "graph_resource"
        )
        opt = L4.L4Mom()
        loss = problem.tf_loss(var_list)
        gv = opt.compute_gradients(loss, var_list)
        gv = [(tf.identity(g), v) for g, v in gv]  # legacy code manipulates them here
        train_op = _apply_forms(opt, gv, loss, global_step)[form]()
        assert train_op.name.startswith("step")
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            records = record_session(sess, train_op, opt, var_list, 5)
            assert sess.run(global_step) == 5
    assert_records_close(records, reference_run(problem, 5, **L4MOM), tf.float64)


def test_apply_gradients_without_a_loss_says_how_to_pass_it():
    with tf.Graph().as_default():
        w = tf.compat.v1.Variable([1.0, 2.0])
        grads = tf.compat.v1.gradients(tf.reduce_sum(w * w), [w])
        with pytest.raises(ValueError, match=r"loss=loss"):
            L4.L4Adam().apply_gradients(list(zip(grads, [w])))


@pytest.mark.eager
def test_eager_apply_gradients_without_a_loss_says_how_to_pass_it():
    w = tf.Variable([1.0, 2.0])
    with pytest.raises(ValueError, match=r"compute_gradients\(loss\)"):
        L4.L4Adam().apply_gradients([(tf.constant([1.0, 1.0]), w)])


def test_the_remembered_loss_is_used_once():
    with tf.Graph().as_default():
        w = tf.compat.v1.Variable([1.0, 2.0])
        opt = L4.L4Adam()
        gv = opt.compute_gradients(tf.reduce_sum(w * w), [w])
        opt.apply_gradients(gv)
        with pytest.raises(ValueError, match="no loss is known"):
            opt.apply_gradients(gv)


@pytest.mark.parametrize("second", ["not a loss", 3, True])
def test_a_second_positional_argument_of_another_kind_is_an_error(second):
    with tf.Graph().as_default():
        w = tf.compat.v1.Variable([1.0, 2.0])
        gv = [(tf.constant([1.0, 1.0]), w)]
        with pytest.raises(TypeError, match="loss .* or the global step"):
            L4.L4Adam().apply_gradients(gv, second)


def test_loss_given_twice_is_an_error():
    with tf.Graph().as_default():
        w = tf.compat.v1.Variable([1.0, 2.0])
        loss = tf.reduce_sum(w * w)
        gv = [(tf.constant([1.0, 1.0]), w)]
        with pytest.raises(TypeError, match="multiple values for argument `loss`"):
            L4.L4Adam().apply_gradients(gv, loss, loss=loss)


def test_a_non_scalar_loss_is_an_error():
    with tf.Graph().as_default():
        w = tf.compat.v1.Variable([1.0, 2.0])
        with pytest.raises(ValueError, match="must be a scalar"):
            L4.L4Adam().apply_gradients([(tf.constant([1.0, 1.0]), w)], loss=w * w)


def test_the_original_module_path():
    import L4.L4 as original
    from L4.L4 import L4Adam, L4General, L4Mom

    assert original.L4Adam is L4Adam is L4.L4Adam
    assert (original.L4Mom, original.L4General) == (L4Mom, L4General)
    assert isinstance(L4Adam(), tf.compat.v1.train.Optimizer)


@pytest.mark.parametrize("kind", VARIABLE_KINDS)
def test_a_global_step_above_zero_does_not_disturb_the_rule(kind):
    """The original read t from the global step: L_min stayed 0 after a restore."""
    problem = LeastSquares()
    with tf.Graph().as_default():
        var_list = make_variables(kind, problem.init, tf.float64)
        global_step = tf.compat.v1.Variable(
            1000, dtype=tf.int64, trainable=False, use_resource=kind == "graph_resource"
        )
        opt = L4.L4Adam()
        train_op = opt.minimize(problem.tf_loss(var_list), global_step=global_step)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            records = record_session(sess, train_op, opt, var_list, 20)
            assert sess.run(global_step) == 1020
            assert sess.run(opt.step_count) == 20
    assert_records_close(records, reference_run(problem, 20, **L4ADAM), tf.float64)


def test_graph_mode_increments_the_graphs_global_step_when_none_is_passed():
    with tf.Graph().as_default():
        w = tf.compat.v1.Variable([1.0, 2.0])
        train_op = L4.L4Adam().minimize(tf.reduce_sum(w * w))
        global_step = tf.compat.v1.train.get_global_step()
        assert global_step is not None
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for _ in range(3):
                sess.run(train_op)
            assert sess.run(global_step) == 3


@pytest.mark.eager
def test_eager_mode_leaves_global_steps_alone():
    w = tf.Variable([1.0, 2.0])
    opt = L4.L4Adam()
    opt.minimize(lambda: tf.reduce_sum(w * w), var_list=[w])
    assert tf.compat.v1.train.get_global_step() is None
    step = tf.Variable(7, dtype=tf.int64)
    opt.minimize(lambda: tf.reduce_sum(w * w), var_list=[w], global_step=step)
    assert int(step.numpy()) == 8 and int(opt.step_count.numpy()) == 2


def test_two_optimizers_in_one_graph_keep_their_own_state():
    """A GAN-like setup: each optimizer follows its own reference."""
    p1, p2 = LeastSquares(seed=3), Logistic(seed=4)
    with tf.Graph().as_default():
        vars1 = make_variables("graph_resource", p1.init, tf.float64)
        vars2 = make_variables("graph_ref", p2.init, tf.float64)
        opt1, opt2 = L4.L4Adam(), L4.L4Mom()
        train_op = tf.group(
            opt1.minimize(p1.tf_loss(vars1), var_list=vars1),
            opt2.minimize(p2.tf_loss(vars2), var_list=vars2),
        )
        assert opt1.min_loss is not opt2.min_loss
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            r1, r2 = [], []
            for _ in range(15):
                sess.run(train_op)
                for opt, var_list, records in ((opt1, vars1, r1), (opt2, vars2, r2)):
                    records.append(record(opt, var_list, sess))
    assert_records_close(r1, reference_run(p1, 15, **L4ADAM), tf.float64)
    assert_records_close(r2, reference_run(p2, 15, **L4MOM), tf.float64)


def test_one_optimizer_in_two_graphs_and_sessions():
    problem = LeastSquares()
    opt = L4.L4General(**L4GENERAL_CUSTOM)
    graphs, records = [tf.Graph(), tf.Graph()], [[], []]
    sessions, ops, var_lists = [], [], []
    for graph in graphs:
        with graph.as_default():
            var_list = make_variables("graph_resource", problem.init, tf.float64)
            ops.append(opt.minimize(problem.tf_loss(var_list), var_list=var_list))
            var_lists.append(var_list)
            sess = tf.compat.v1.Session(graph=graph)
            sess.run(tf.compat.v1.global_variables_initializer())
            sessions.append(sess)
    # Interleave unequal numbers of steps: the graphs must not share state.
    for step in range(12):
        for i in (0, 1) if step < 7 else (0,):
            with graphs[i].as_default():
                sessions[i].run(ops[i])
                records[i].append(record(opt, var_lists[i], sessions[i]))
    for sess in sessions:
        sess.close()
    assert_records_close(
        records[0], reference_run(problem, 12, **L4GENERAL_CUSTOM), tf.float64
    )
    assert_records_close(
        records[1], reference_run(problem, 7, **L4GENERAL_CUSTOM), tf.float64
    )


@pytest.mark.parametrize(
    "make_optimizer, slots",
    [
        (lambda: L4.L4Adam(), ["m", "v"]),
        (lambda: L4.L4Mom(), ["m"]),
        (lambda: L4.L4Adam(adam_params={"time_scale_grad": 5.0}), ["g_m", "m", "v"]),
        (lambda: L4.L4Mom(mom_params={"time_momentum": 5.0}), ["g_m", "m"]),
        (lambda: L4.L4General(**L4GENERAL_CUSTOM), ["g_m", "g_v", "m"]),
    ],
)
def test_equal_emas_are_kept_once(make_optimizer, slots):
    with tf.Graph().as_default():
        w = tf.compat.v1.Variable(tf.ones([3, 4]))
        opt = make_optimizer()
        opt.minimize(tf.reduce_sum(w * w), var_list=[w])
        assert sorted(opt.get_slot_names()) == slots
        # Slots, plus four scalars (t, skips, L_min, eta); nothing per variable besides.
        assert len(opt.variables()) == len(slots) + 4


def test_graph_mode_writes_the_original_summaries():
    with tf.Graph().as_default():
        w = tf.compat.v1.Variable([1.0, 2.0])
        train_op = L4.L4Adam().minimize(tf.reduce_sum(w * w))
        summaries = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.SUMMARIES)
        names = sorted(s.op.name.split("/")[-1] for s in summaries)
        assert names == ["effective_learning_rate", "min_loss_estimate"]
        merged = tf.compat.v1.summary.merge_all()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(train_op)
            event = tf.compat.v1.Summary.FromString(sess.run(merged))
            assert {v.tag for v in event.value} == {
                "L4Adam/effective_learning_rate",
                "L4Adam/min_loss_estimate",
            }


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(fraction=0.0),
            r"`fraction` must be in the range \(0.0, inf\]. Received: fraction=0.0",
        ),
        (dict(fraction=float("nan")), r"`fraction` must be a finite real number"),
        (dict(fraction="0.1"), r"Received: fraction='0.1'"),
        (
            dict(minloss_factor=1.5),
            r"`minloss_factor` must be in the range \[0.0, 1.0\]. Received: minloss_factor=1.5",
        ),
        (dict(init_factor=-0.1), r"`init_factor` must be in the range"),
        (
            dict(minloss_forget_time=0),
            r"`minloss_forget_time` must be in the range \(0.0, inf\]",
        ),
        (dict(epsilon=-1e-12), r"`epsilon` must be in the range \[0.0, inf\]"),
        (
            dict(direction_estimator="sgd"),
            r"`direction_estimator` must be one of \['adam', 'momentum'\]. Received: direction_estimator='sgd'",
        ),
        (
            dict(gradient_estimator="rmsprop"),
            r"`gradient_estimator` must be one of \['adam', 'momentum'\]",
        ),
        (
            dict(direction_params={"beta": 0.9}),
            r"Unknown parameters \['beta'\] in `direction_params`.*valid parameters are \['time_scale_grad', 'time_scale_var', 'epsilon'\]",
        ),
        (
            dict(gradient_params={"time_momentum": 0.5}),
            r"`gradient_params\[\"time_momentum\"\]` must be in the range \[1.0, inf\]",
        ),
        (
            dict(direction_params={"epsilon": -1.0}),
            r"`direction_params\[\"epsilon\"\]` must be in the range",
        ),
    ],
)
def test_bad_hyperparameters_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        L4.L4General(**kwargs)


def test_subclass_parameters_are_checked_too():
    with pytest.raises(
        ValueError, match=r"Unknown parameters \['beta1'\] in `direction_params`"
    ):
        L4.L4Adam(adam_params={"beta1": 0.9})
    with pytest.raises(ValueError, match=r"`direction_params\[\"time_momentum\"\]`"):
        L4.L4Mom(mom_params={"time_momentum": 0.0})


def test_original_argument_order():
    opt = L4.L4Adam(0.2, 0.8, 0.5, 100.0, 1e-10, {"time_scale_var": 100.0})
    rule = opt._rule
    assert (opt._fraction, rule.minloss_factor, rule.init_factor) == (0.2, 0.8, 0.5)
    assert (rule.minloss_forget_time, rule.epsilon) == (100.0, 1e-10)
    assert rule.direction_estimator.emas[1].decay == pytest.approx(0.99)
    with pytest.raises(TypeError):
        L4.L4Adam(
            0.2, 0.8, 0.5, 100.0, 1e-10, None, False
        )  # use_locking is keyword-only


ORIGINAL = [
    "fraction",
    "minloss_factor",
    "init_factor",
    "minloss_forget_time",
    "epsilon",
]


@pytest.mark.parametrize("module", [L4, L4.compat], ids=["v1", "keras"])
@pytest.mark.parametrize(
    "name,params", [("L4Adam", "adam_params"), ("L4Mom", "mom_params")]
)
def test_presets_keep_the_original_signature(module, name, params):
    preset = getattr(module, name)
    parameters = inspect.signature(preset).parameters
    assert list(parameters)[:6] == ORIGINAL + [params]
    general = inspect.signature(module.L4General).parameters
    for option in (
        "loss_lower_bound",
        "max_effective_learning_rate",
        "reduce_loss",
        "name",
    ):
        assert parameters[option].kind is inspect.Parameter.KEYWORD_ONLY
        assert parameters[option].default == general[option].default
    opt = preset(
        0.2,
        0.8,
        0.5,
        100.0,
        1e-10,
        {"time_momentum" if params == "mom_params" else "time_scale_var": 100.0},
        name="custom",
    )
    assert opt._rule.direction_estimator.kind == (
        "adam" if name == "L4Adam" else "momentum"
    )
    assert opt._rule.direction_estimator.emas[-1].decay == pytest.approx(0.99)
    with pytest.raises(TypeError):
        preset(direction_estimator="momentum")


@pytest.mark.parametrize("kind", VARIABLE_KINDS)
def test_saver_restores_mid_training_exactly(kind, tmp_path):
    problem = LeastSquares()

    def build():
        var_list = make_variables(kind, problem.init, tf.float32)
        opt = L4.L4Adam()
        return var_list, opt, opt.minimize(problem.tf_loss(var_list))

    path = os.path.join(str(tmp_path), "model.ckpt")
    with tf.Graph().as_default():
        var_list, opt, train_op = build()
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            record_session(sess, train_op, opt, var_list, 20)
            saver.save(sess, path)
            uninterrupted = record_session(sess, train_op, opt, var_list, 30)
    with tf.Graph().as_default():
        var_list, opt, train_op = build()
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            saver.restore(sess, path)
            assert sess.run(opt.step_count) == 20
            resumed = record_session(sess, train_op, opt, var_list, 30)
    for a, b in zip(resumed, uninterrupted):
        for pa, pb in zip(a.params, b.params):
            np.testing.assert_array_equal(pa, pb)
        assert a.eta == b.eta and a.min_loss == b.min_loss
