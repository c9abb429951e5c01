"""The whole evaluation of an unlearned model: accuracies, membership inference, distance to the reference.

Pure functions over model outputs (logits and embeddings per part of a split); docs/evaluation.md
defines every metric. Everything is to be compared with the retrained reference, not maximised.
"""

import numpy as np

from jaxunlearn.data.splits import Split
from jaxunlearn.evaluation.accuracy import Parts, accuracy_and_confidence, softmax
from jaxunlearn.evaluation.attacks import attack_suite, svc_mia_efficacy
from jaxunlearn.evaluation.divergence import js_divergence, kl_divergence, prediction_agreement
from jaxunlearn.evaluation.shallow import probe_accuracies

Outputs = dict[str, tuple[np.ndarray, np.ndarray]]
"""part name → (logits [n, C], embeddings [n, D])."""

MIA_MEMBERS = 10_000
"""SalUn's shadow members: the first 10,000 retain examples in dataset order (fewer if the set is smaller)."""


def part_labels(parts: Parts, labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """part name → true labels of its rows; `labels` maps each set to its labels (`accuracy.host_labels`)."""
    return {name: labels[where][indices] for name, (where, indices) in parts.items()}


def forgetting_metrics(outputs: Outputs, labels: dict[str, np.ndarray], split: Split, *,
                       n_bootstrap: int = 200, seed: int = 0) -> dict[str, float]:
    """Accuracies and confidences per part, SalUn's MIA-efficacy and the threshold-free attacks.

    MIA-efficacy: SVC on true-class confidence, members = the first 10,000 retain examples, non-members =
    the test part (without the forgotten classes in class mode), target = the forget set.
    Threshold-free attacks: the forget set (members) against unseen images of the same distribution:
    the forgotten classes' test images in class mode, the whole test set in sample mode.
    """
    metrics = {}
    for name, (logits, _) in outputs.items():
        metrics[f"{name}_acc"], metrics[f"{name}_conf"] = accuracy_and_confidence(logits, labels[name])
    # SalUn feeds the SVC float32 softmax probabilities; float64 ones can flip decisions at its boundary.
    confidence = {name: softmax(logits.astype(np.float32))[np.arange(len(logits)), labels[name]]
                  for name, (logits, _) in outputs.items()}
    members = confidence["retain_train"][:MIA_MEMBERS]
    metrics["mia_efficacy"] = svc_mia_efficacy(members, confidence["test"], confidence["forget_train"])
    unseen = "forget_test" if split.spec.mode == "class" else "test"
    metrics.update(attack_suite(outputs["forget_train"][0], labels["forget_train"], outputs[unseen][0],
                                labels[unseen], n_bootstrap=n_bootstrap, seed=seed))
    return metrics


def reference_metrics(outputs: Outputs, reference: Outputs, parts: tuple[str, ...] = ("forget_train", "test")) -> dict[str, float]:
    """Mean JS and KL(reference ‖ model) between the two models' predictions, and argmax agreement, per part."""
    metrics = {}
    for name in parts:
        p_model, p_reference = softmax(outputs[name][0]), softmax(reference[name][0])
        short = name.removesuffix("_train")
        metrics[f"js_{short}"] = float(np.mean(js_divergence(p_model, p_reference)))
        metrics[f"kl_{short}"] = float(np.mean(kl_divergence(p_reference, p_model)))
        metrics[f"agreement_{short}"] = prediction_agreement(p_model, p_reference)
    return metrics


def probe_metrics(outputs: Outputs, labels: dict[str, np.ndarray], split: Split) -> dict[str, float]:
    """`probe_accuracies` on the embeddings of the whole test set (in class mode the forgotten classes' test
    images and the others together) and of the forget set."""
    test_parts = ("forget_test", "test") if split.spec.mode == "class" else ("test",)
    return probe_accuracies(np.concatenate([outputs[name][1] for name in test_parts]),
                            np.concatenate([labels[name] for name in test_parts]),
                            outputs["forget_train"][1], labels["forget_train"], split.spec.classes)
