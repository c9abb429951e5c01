"""`jaxunlearn audit`: the NeurIPS 2023 challenge's forget quality of one method, calibrated.

From one original run and one split, it runs four arms of N models each (runs of several models,
`jaxunlearn.engine.ensemble`), then scores them with `jaxunlearn.evaluation.challenge`:

  <method>/       N unlearnings of the original with the method, seeds 0 … N−1
  retrain/        N retrainings on the retain set from scratch, seeds 0 … N−1
  retrain-floor/  N more, seeds N … 2N−1: retrain scored against retrain is the best any method can get
                  at this N (the maximum over hundreds of decision rules keeps it below 1)
  original/       N models trained on the whole training set, seeds 2N … 3N−1: the untouched original,
                  which must score clearly below the floor

Every arm is a resumable run directory, shared by the audits of other methods in the same workdir. The
scores go to `audit.json` (updated per method), the logit-scaled confidences of the forget set to
`confidences.npz`, and a histogram of the per-example ε to `epsilons.png`.

    jaxunlearn audit --from runs/digits --forget class:5 --method contrastive --models 8 --workdir runs/audit

`jaxunlearn ulira` runs U-LiRA (`run_ulira`, `jaxunlearn.evaluation.lira`): S shadow originals on
complementary halves of the original's training set, the method unlearning in each the audited examples it
holds, every shadow retrained without them, and the likelihood-ratio attack's balanced accuracy on held-out
shadows (50%: it cannot tell an unlearned example from one the model never saw).
"""

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jaxunlearn.config import UnlearnConfig, as_forget_spec
from jaxunlearn.data.splits import ForgetSpec, Pairing, Split, index_hash, make_split
from jaxunlearn.engine import checkpoint
from jaxunlearn.engine.ensemble import make_ensemble, take
from jaxunlearn.engine.parallel import Execution
from jaxunlearn.errors import UserError
from jaxunlearn.files import atomic_write, check_writable, owned_directory, write_json
from jaxunlearn.evaluation.accuracy import host_labels, part_outputs, split_parts
from jaxunlearn.evaluation.challenge import (
    challenge_epsilons, epsilon_points, final_score, logit_scaled_confidence,
)
from jaxunlearn.evaluation.lira import balanced_shadow_halves, ulira
from jaxunlearn.methods import Context, get_method
from jaxunlearn.report import new_figure, save_figure
from jaxunlearn.run import Run
from jaxunlearn.runs import obtain_split, resolve_hparams, source_config, train, unlearn

REFERENCE = "retrain"
FLOOR = "retrain-floor"
ORIGINAL = "original"


@dataclass(frozen=True)
class AuditConfig:
    """What to audit: `method` (with its --hp overrides) forgetting `forget` from one original, N = `models`
    models per arm; the split is drawn with `seed` (`pairing` as in `unlearn`)."""

    method: str
    forget: ForgetSpec
    models: int
    hparams: dict[str, str] = dataclasses.field(default_factory=dict)
    seed: int = 0
    pairing: Pairing = "default"

    def __post_init__(self) -> None:
        object.__setattr__(self, "forget", as_forget_spec(self.forget))


@dataclass(frozen=True)
class Arm:
    """One arm's scores inputs: φ of the forget set [N, M], retain and test accuracy [N] per model."""

    confidences: np.ndarray
    retain_acc: np.ndarray
    test_acc: np.ndarray
    seconds: float


def check_audit(config: AuditConfig, source: str | Path, execution: Execution) -> Split:
    """Everything an audit needs, checked before anything is written; returns the split (not saved yet).

    UserError for N < 2, an unknown method or one that cannot forget this way, bad hyperparameters, a
    source that is no training run, a forget spec the dataset cannot have, or a layout the devices cannot run.
    """
    if config.models < 2:
        raise UserError(f"an audit needs at least 2 models per arm, got {config.models}")
    original = source_config(source)
    held = Run(source).seeds
    if held is not None:
        raise UserError(f"{source} holds {len(held)} models; an audit starts from one original")
    unlearn_config = UnlearnConfig(method=config.method, forget=config.forget, hparams=config.hparams,
                                   pairing=config.pairing, seed=config.seed)
    hparams = resolve_hparams(unlearn_config, original)
    if get_method(config.method).from_scratch:
        raise UserError(f"{config.method} is the reference itself; audit a method that starts from the original")
    dataset = Run(source).dataset  # checked against its recorded fingerprint
    split = make_split(config.forget, dataset.train_labels, dataset.num_classes,
                       pairing=config.pairing, seed=config.seed)
    context = Context(split=split, num_classes=dataset.num_classes, pairing=config.pairing, seed=config.seed,
                      train_labels=dataset.train_labels, image_shape=dataset.image_shape)
    get_method(config.method).plan(hparams, context, 0)  # the method's own checks of its plan
    make_ensemble(config.models, execution)
    return split


def run_audit(config: AuditConfig, source: str | Path, workdir: str | Path, *,
              execution: Execution = Execution()) -> dict[str, Any]:
    """Run (or resume) the four arms and write audit.json, confidences.npz and epsilons.png in `workdir`.

    Returns audit.json's content: {"method", "forget", "models", "split_hash", "floor": …, "original": …,
    "methods": {name: …}}, each scored arm with its forget quality F at N and at every power of 2 below,
    its final score, per-example ε and accuracies (see `score_arm`).
    """
    check_audit(config, source, execution)
    return _in_own_workdir(workdir, source, "audit.json", lambda path: _run_audit(config, source, path, execution))


def _run_audit(config: AuditConfig, source: str | Path, workdir: Path, execution: Execution) -> dict[str, Any]:
    original = source_config(source)
    dataset = Run(source).dataset  # checked against its recorded fingerprint
    split = obtain_split(source, dataset, config.forget, config.pairing, config.seed)
    workdir = Path(workdir)
    n = config.models
    arms: dict[str, Any] = {}
    started = time.perf_counter()

    def unlearn_arm(name: str, method: str, hparams: dict[str, str], seeds: range) -> Arm:
        _announce(f"audit: {name} ({n} models)")
        run = workdir / name
        unlearn(UnlearnConfig(method=method, forget=config.forget, hparams=hparams, pairing=config.pairing,
                              seed=config.seed), source, run, execution=execution, seeds=seeds)
        return arm_outputs(run, split, n)

    arms[config.method] = unlearn_arm(config.method, config.method, config.hparams, range(n))
    arms[REFERENCE] = unlearn_arm(REFERENCE, REFERENCE, {}, range(n))
    arms[FLOOR] = unlearn_arm(FLOOR, REFERENCE, {}, range(n, 2 * n))
    _announce(f"audit: {ORIGINAL} ({n} models on the whole training set)")
    train(original, workdir / ORIGINAL, execution=execution, seeds=range(2 * n, 3 * n))
    arms[ORIGINAL] = arm_outputs(workdir / ORIGINAL, split, n)

    reference = arms[REFERENCE]
    audit_path = workdir / "audit.json"
    previous = _read_json(audit_path)
    summary = {
        "forget": str(config.forget), "split_hash": split.content_hash(), "models": n,
        "source": str(Path(source).absolute()),
        "floor": score_arm(arms[FLOOR], reference), "original": score_arm(arms[ORIGINAL], reference),
        "methods": {**(previous.get("methods", {}) if _same_audit(previous, split, n) else {}),
                    config.method: {**score_arm(arms[config.method], reference),
                                    "hparams": config.hparams}},
        "reference": {"retain_acc": float(np.mean(reference.retain_acc)),
                      "test_acc": float(np.mean(reference.test_acc)), "seconds": reference.seconds},
        "wall_seconds": time.perf_counter() - started,
    }
    write_json(audit_path, summary)
    scored = {**{name: arm_outputs(workdir / name, split, n) for name in summary["methods"]},
              **arms}
    atomic_write(workdir / "confidences.npz", lambda file: np.savez(
        file, forget_indices=split.forget, **{name.replace("-", "_"): arm.confidences for name, arm in scored.items()}),
        "wb")
    write_epsilon_histogram(summary, workdir / "epsilons.png")
    return summary


def arm_outputs(run: Path, split: Split, models: int) -> Arm:
    """φ of every forget example and the retain and test accuracy under each of a run's `models` models.

    Kept in `run/audit_outputs.npz` for the split and checkpoint they were computed from, so the arms that
    audits of several methods share are evaluated once.
    """
    key = f"{split.content_hash()}|{checkpoint.latest_epoch(run)}|{models}"
    stored = _cached(run / "audit_outputs.npz", key, lambda: _evaluate_arm(run, split, models))
    return Arm(stored["confidences"], stored["retain_acc"], stored["test_acc"], float(stored["seconds"]))


def _evaluate_arm(run: Path, split: Split, models: int) -> dict[str, np.ndarray]:
    loaded = Run(run)
    _, params, batch_stats = loaded.model()
    dataset, data, predict = loaded.dataset, loaded.data, loaded.predict
    parts = {name: part for name, part in split_parts(split, dataset.test_labels).items()
             if name in ("forget_train", "retain_train", "test")}
    labels = host_labels(dataset)
    confidences, retain_acc, test_acc = [], [], []
    for k in range(models):
        model_params, model_stats = take((params, batch_stats), k)
        logits = {name: logits for name, (logits, _) in
                  part_outputs(predict, model_params, model_stats, data, parts).items()}
        confidences.append(logit_scaled_confidence(logits["forget_train"], labels["train"][split.forget]))
        for name, store in (("retain_train", retain_acc), ("test", test_acc)):
            where, indices = parts[name]
            store.append(float(np.mean(logits[name].argmax(axis=1) == labels[where][indices])))
    return {"confidences": np.stack(confidences), "retain_acc": np.array(retain_acc),
            "test_acc": np.array(test_acc), "seconds": np.array(loaded.meta.get("seconds", 0.0))}


def _cached(path: Path, key: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays `compute()` returns, kept in the .npz file `path` under `key` and computed again only for
    another key (another checkpoint, split or model count)."""
    if path.exists():
        with np.load(path) as stored:
            if str(stored["key"]) == key:
                return {name: stored[name] for name in stored.files if name != "key"}
    arrays = compute()
    atomic_write(path, lambda file: np.savez(file, key=np.array(key), **arrays), "wb")
    return arrays


def score_arm(arm: Arm, reference: Arm) -> dict[str, Any]:
    """The challenge scores of one arm against the retrained one: forget quality F at N and at every power
    of two from 2 up (the first models of each arm), the final score at N, per-example ε, mean accuracies."""
    n = len(arm.confidences)
    epsilons = challenge_epsilons(arm.confidences, reference.confidences)
    quality = float(np.mean(epsilon_points(epsilons, n)))
    sizes = sorted({2 ** p for p in range(1, int(np.log2(n)) + 1)} | {n})
    by_models = {str(m): float(np.mean(epsilon_points(
        challenge_epsilons(arm.confidences[:m], reference.confidences[:m]), m))) for m in sizes if m < n}
    return {"forget_quality": quality, "forget_quality_by_models": {**by_models, str(n): quality},
            "final_score": final_score(quality, arm.retain_acc, reference.retain_acc, arm.test_acc,
                                       reference.test_acc),
            "retain_acc": float(np.mean(arm.retain_acc)), "test_acc": float(np.mean(arm.test_acc)),
            "epsilons": epsilons.tolist(), "seconds": arm.seconds}


def write_epsilon_histogram(summary: dict[str, Any], path: Path) -> None:
    """Share of the forget examples in each of the challenge's ε bins, one bar per scored arm: bins of ½
    from 0 (scoring 1, ½, ¼, …) up to ⌈ln(N−1)⌉, and one bin beyond it (scoring 0)."""
    n = summary["models"]
    top = int(np.ceil(np.log(n - 1)))
    edges = np.append(np.arange(0, top + 0.25, 0.5), np.inf)
    rows = {**summary["methods"], "retrain vs retrain (floor)": summary["floor"], "original": summary["original"]}
    fig = new_figure(max(8.0, 1.0 + 0.45 * len(edges) * len(rows) / 2), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / len(rows)
    for i, (name, entry) in enumerate(rows.items()):
        counts, _ = np.histogram(entry["epsilons"], bins=edges)
        ax.bar(np.arange(len(counts)) - 0.4 + width * (i + 0.5), 100 * counts / max(counts.sum(), 1), width,
               label=f"{name}: F = {entry['forget_quality']:.3f}")
    labels = [f"[{lo:g}, {hi:g})" for lo, hi in zip(edges[:-2], edges[1:-1])] + [f"≥ {top} (0 points)"]
    ax.set_xticks(np.arange(len(labels)), labels, rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_xlabel("per-example ε (bins of the challenge score: 1, ½, ¼, … points)")
    ax.set_ylabel("forget examples (%)")
    ax.set_title(f"Challenge ε per forget example against {n} retrained models, {summary['forget']}")
    ax.legend(fontsize=8, frameon=False, loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    save_figure(fig, path)


@dataclass(frozen=True)
class UliraConfig:
    """U-LiRA of `method` (with its --hp overrides): `audited` training examples drawn with `seed`, `shadows`
    shadow models (an even count), a quarter of them (at least 2) held out as targets."""

    method: str
    audited: int
    shadows: int
    hparams: dict[str, str] = dataclasses.field(default_factory=dict)
    seed: int = 0

    @property
    def targets(self) -> int:
        return max(2, self.shadows // 4 // 2 * 2)


def check_ulira(config: UliraConfig, source: str | Path, execution: Execution) -> None:
    """UserError, before anything is written, for a U-LiRA that cannot be run."""
    if config.shadows < 8 or config.shadows % 2:
        raise UserError(f"U-LiRA needs an even number of at least 8 shadows, got {config.shadows}")
    if config.audited < 2 or config.audited % 2:
        raise UserError(f"the audited examples are held by half of the shadows: an even count >= 2, "
                        f"got {config.audited}")
    original = source_config(source)
    train_size = len(Run(source).dataset.train_labels)
    if config.audited > train_size // 2:
        raise UserError(f"at most half of the {train_size} training images can be audited, got {config.audited}")
    method = get_method(config.method)
    method.check_mode("sample")
    if method.from_scratch:
        raise UserError(f"{config.method} is the control itself; audit a method that starts from the original")
    resolve_hparams(UnlearnConfig(method=config.method, forget=ForgetSpec("random", count=config.audited // 2),
                                  hparams=config.hparams, seed=config.seed), original)
    make_ensemble(config.shadows, execution)


def shadow_splits(subsets: np.ndarray, held_in: np.ndarray, audited: np.ndarray, seed: int) -> list[Split]:
    """Each shadow's split: the audited examples it holds are forgotten, the rest of its subset retained."""
    return [Split(forget=np.sort(audited[held]), retain=np.setdiff1d(subset, audited[held]),
                  spec=ForgetSpec("random", count=int(held.sum())), pairing="default", seed=seed)
            for subset, held in zip(subsets, held_in)]


def run_ulira(config: UliraConfig, source: str | Path, workdir: str | Path, *,
              execution: Execution = Execution()) -> dict[str, Any]:
    """Run (or resume) the U-LiRA arms, then the attack; writes and returns `ulira.json`.

    Arms, each a run of S models: `shadows`, the shadow originals on complementary halves (seeds 3S … 4S−1);
    `<method>`, the method in every shadow forgetting the audited examples it holds (seeds 0 … S−1);
    `retrain`, every shadow retrained from scratch without them (seeds S … 2S−1), which never saw any
    audited example: the "never seen" side; `retrain-floor`, the same with seeds 2S … 3S−1, the control.
    ulira.json: {"audited", "shadows", "targets", "seed", "methods": {name: `lira.ulira` result},
    "floor": retraining attacked as if it were a method (the attack's chance level, ideally 50%),
    "original": the shadow originals themselves (no unlearning)}.
    """
    check_ulira(config, source, execution)
    return _in_own_workdir(workdir, source, "ulira.json", lambda path: _run_ulira(config, source, path, execution))


def _run_ulira(config: UliraConfig, source: str | Path, workdir: Path, execution: Execution) -> dict[str, Any]:
    original = source_config(source)
    dataset = Run(source).dataset  # checked against its recorded fingerprint
    audited = make_split(ForgetSpec("random", count=config.audited), dataset.train_labels, dataset.num_classes,
                         seed=config.seed).forget
    subsets, held_in = balanced_shadow_halves(len(dataset.train_labels), audited, config.shadows, config.seed)
    splits = shadow_splits(subsets, held_in, audited, config.seed)
    workdir = Path(workdir)
    s = config.shadows
    labels = dataset.train_labels[audited]
    _announce(f"ulira: {s} shadow originals on halves of the training set")
    train(original, workdir / "shadows", execution=execution, seeds=range(3 * s, 4 * s), subsets=subsets)

    def shadow_arm(name: str, method: str, hparams: dict[str, str], seeds: range) -> np.ndarray:
        _announce(f"ulira: {name} in the {s} shadows")
        unlearn(UnlearnConfig(method=method, forget=ForgetSpec("random", count=config.audited // 2), hparams=hparams,
                              seed=config.seed), workdir / "shadows", workdir / name, execution=execution,
                seeds=seeds, splits=splits)
        return model_confidences(workdir / name, audited, labels, s)

    unlearned = shadow_arm(config.method, config.method, config.hparams, range(s))
    never_seen = shadow_arm(REFERENCE, REFERENCE, {}, range(s, 2 * s))
    floor = shadow_arm(FLOOR, REFERENCE, {}, range(2 * s, 3 * s))
    shadows = model_confidences(workdir / "shadows", audited, labels, s)
    fitting = np.arange(s) < s - config.targets
    previous = _read_json(workdir / "ulira.json")
    same = all(previous.get(key) == value for key, value in
               (("audited", config.audited), ("shadows", s), ("seed", config.seed)))
    results = {"audited": config.audited, "shadows": s, "targets": config.targets, "seed": config.seed,
               "floor": ulira(floor, never_seen, held_in, fitting),
               "original": ulira(shadows, never_seen, held_in, fitting),
               "methods": {**(previous.get("methods", {}) if same else {}),
                           config.method: {**ulira(unlearned, never_seen, held_in, fitting),
                                           "hparams": config.hparams}}}
    write_json(workdir / "ulira.json", results)
    return results


def model_confidences(run: Path, indices: np.ndarray, labels: np.ndarray, models: int) -> np.ndarray:
    """φ [K, n] of the train images `indices` (true labels `labels`) under each of a run's `models` models,
    kept in `run/ulira_confidences.npz` for the checkpoint and examples they were computed from."""
    key = f"{index_hash(indices)}|{checkpoint.latest_epoch(run)}|{models}"
    return _cached(run / "ulira_confidences.npz", key, lambda: {"confidences": _model_confidences(
        run, indices, labels, models)})["confidences"]


def _model_confidences(run: Path, indices: np.ndarray, labels: np.ndarray, models: int) -> np.ndarray:
    loaded = Run(run)
    _, params, batch_stats = loaded.model()
    return np.stack([logit_scaled_confidence(loaded.predict(*take((params, batch_stats), k), loaded.data.train_images,
                                                            indices)[0],
                                             labels) for k in range(models)])


def _same_audit(previous: dict[str, Any], split: Split, models: int) -> bool:
    return previous.get("split_hash") == split.content_hash() and previous.get("models") == models


def _read_json(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text()) if path.exists() else {}


def _in_own_workdir(workdir: str | Path, source: str | Path, result: str, run: Callable[[Path], Any]) -> Any:
    """run(workdir) with the workdir owned by this process (`owned_directory`); first a UserError for a workdir
    that is empty, is the original's run or lies in it, or cannot hold `result`."""
    if not str(workdir).strip():
        raise UserError("`workdir` is empty")
    inside = Path(os.path.realpath(workdir))
    if inside == Path(os.path.realpath(source)) or Path(os.path.realpath(source)) in inside.parents:
        raise UserError(f"`workdir` {workdir} is inside the original's run {source}; choose a directory of its own")
    check_writable(Path(workdir) / result, "`workdir`")
    with owned_directory(workdir, "`workdir`"):
        return run(Path(workdir))


def _announce(message: str) -> None:
    print(f"== {message}", file=sys.stderr, flush=True)
