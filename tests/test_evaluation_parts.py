"""Evaluating the parts of a split: one prediction per set, and nothing measured twice."""

import numpy as np
from flax import nnx

from jaxunlearn.data.splits import make_split, parse_forget
from jaxunlearn.evaluation.accuracy import evaluate_parts, host_labels, make_predictor, part_outputs, split_parts
from jaxunlearn.testing import digits, small_model


def _setup():
    dataset, data = digits()
    graphdef, params, batch_stats = nnx.split(small_model(dataset.num_classes), nnx.Param, nnx.BatchStat)
    split = make_split(parse_forget("class:5"), dataset.train_labels, dataset.num_classes)
    parts = split_parts(split, dataset.test_labels)
    return dataset, data, make_predictor(graphdef, data.mean, data.std), params, batch_stats, parts


def test_the_parts_of_one_set_are_predicted_together_and_give_each_part_its_own_outputs_exactly():
    dataset, data, predict, params, batch_stats, parts = _setup()
    calls = []

    def counting(params, batch_stats, images, indices):
        calls.append(len(indices))
        return predict(params, batch_stats, images, indices)

    together = part_outputs(counting, params, batch_stats, data, parts)
    assert sorted(calls) == sorted([len(dataset.train_labels), len(dataset.test_labels)])  # one call per set
    images = {"train": data.train_images, "test": data.test_images}
    for name, (where, indices) in parts.items():
        alone = predict(params, batch_stats, images[where], indices)
        # bit for bit: in eval mode a row's outputs do not depend on the rows beside it
        np.testing.assert_array_equal(together[name][0], alone[0])
        np.testing.assert_array_equal(together[name][1], alone[1])


def test_metrics_already_measured_are_taken_as_given_and_the_rest_measured():
    dataset, data, predict, params, batch_stats, parts = _setup()
    labels = host_labels(dataset)
    full = evaluate_parts(predict, params, batch_stats, data, labels, parts)
    known = {key: value for key, value in full.items() if not key.startswith("retain_train")}
    known["test_acc"] = 2.0  # impossible as a measurement: shows the value was taken, not measured
    calls = []

    def counting(params, batch_stats, images, indices):
        calls.append(len(indices))
        return predict(params, batch_stats, images, indices)

    metrics = evaluate_parts(counting, params, batch_stats, data, labels, parts, known)
    assert calls == [len(parts["retain_train"][1])]  # only the part not known
    assert list(metrics) == list(full)  # the order of the parts
    assert metrics == {**full, "test_acc": 2.0}
    assert evaluate_parts(counting, params, batch_stats, data, labels, parts, {"test_acc": 0.5}) == full  # acc alone is not enough


def test_evaluators_are_units_a_protocol_names_and_a_researcher_can_add():
    from jaxunlearn.evaluation import EVALUATORS, PROTOCOL, EvaluatedModel, evaluate_model, evaluator, run_protocol
    from jaxunlearn.evaluation.metrics import REGISTRY

    dataset, data, predict, params, batch_stats, parts = _setup()
    graphdef = nnx.split(small_model(dataset.num_classes), nnx.Param, nnx.BatchStat)[0]
    split = make_split(parse_forget("class:5"), dataset.train_labels, dataset.num_classes)
    accuracies = evaluate_model(graphdef, params, batch_stats, dataset, split, data=data, predict=predict,
                                protocol=("accuracy",))
    assert accuracies == evaluate_parts(predict, params, batch_stats, data, host_labels(dataset), parts)
    whole = evaluate_model(graphdef, params, batch_stats, dataset, split, data=data, predict=predict)
    assert {key: whole[key] for key in accuracies} == accuracies  # the protocol's first unit, the same numbers
    assert "mia_efficacy" in whole and "probe_forget_acc" in whole and "bn_recomputed_test_acc" in whole
    assert "l2_to_original" not in whole and "js_forget" not in whole  # they need the other models' weights

    @evaluator
    def forget_logit_margin(model: EvaluatedModel) -> dict[str, float]:
        logits = model.outputs["forget_train"][0]
        top2 = np.sort(logits, axis=1)[:, -2:]
        return {"forget_logit_margin": float(np.mean(top2[:, 1] - top2[:, 0]))}

    try:
        model = EvaluatedModel(graphdef, params, batch_stats, dataset, data, predict, split)
        extended = run_protocol(model, (*PROTOCOL, "forget_logit_margin"))
        assert extended["forget_logit_margin"] > 0 and {k: extended[k] for k in whole} == whole
    finally:
        del EVALUATORS["forget_logit_margin"]
    # every metric of the registry points to the evaluator (or the loop) that computes it
    evaluators = {f"jaxunlearn.evaluation.evaluators.{name}" for name in PROTOCOL}
    assert {m.computed_by for m in REGISTRY if m.name in whole} <= evaluators
