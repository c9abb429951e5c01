"""Experiments: one protocol, every method, several seeds, one command, resumable.

A protocol is a Python file under experiments/protocols/ that defines `PROTOCOL = ExperimentProtocol(...)`.
For each seed the runner trains (or reuses) one original model, makes the split once (saved with the
original, so every method forgets the same samples), runs the retrained reference and then every method
on it, and evaluates each run against the reference. Results are appended to `OUT/results.json` after every
run, and the run's configuration to `OUT/runs/seed<S>/<run>.json`, so an interrupted experiment resumes where
it stopped (an interrupted run resumes from its own last checkpoint). OUT is the record; RUNS only holds the
models: when a seed's original or reference is gone from it, it is trained again and must measure what
results.json recorded (training is deterministic on one machine and version), and the remaining runs go on
from there. At the end `OUT/report.md` holds the mean ± std table with the gap to the retrained model, and
the plots.

A protocol may tune methods (`tuning`, `jaxunlearn.tuning`): each tuned method first tries every
configuration of its grid on the first seed (runs `<method>-tune<i>`), the configuration closest to the
retrained reference on forget-train, retain-train and the held-out validation images is chosen, and it runs
on every seed as `<method>-tuned`, beside the method at its defaults. results.json keeps every configuration
tried, its score and the choice under "tuning"; report.md shows them.

Layout: RUNS/<protocol>/seed<S>/{original, retrain, <method>..., <method>-tune<i>..., <method>-tuned...};
OUT/{results.json, report.md, *.png, runs/seed<S>/{<run>.json, <split>.npz}}.
"""

import dataclasses
import importlib.machinery
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from jaxunlearn.config import TrainConfig, UnlearnConfig, as_forget_spec, override, to_json
from jaxunlearn.data.splits import PAIRINGS, ForgetSpec, Pairing, Split, make_split
from jaxunlearn.engine.parallel import Execution, is_main_process
from jaxunlearn.errors import UserError
from jaxunlearn.files import LOCK_FILE, RunLock, check_writable, owned_directory, write_json
from jaxunlearn.evaluation.relearn import RelearnSettings
from jaxunlearn.methods import get_method
from jaxunlearn.report import write_seed_report
from jaxunlearn.run import Run, training_data
from jaxunlearn.run_config import with_defaults
from jaxunlearn.evaluation.evaluators import evaluate_model
from jaxunlearn.runs import evaluate, obtain_split, resolve_hparams, train, unlearn, unlearn_run_config
from jaxunlearn.tuning import SCORED_PARTS, Tuning, tuning_record

REFERENCE = "retrain"
TUNED = "-tuned"
"""Suffix of a tuned method's runs: `contrastive-tuned`."""


@dataclasses.dataclass(frozen=True)
class ExperimentProtocol:
    """One experiment. Its file's docstring says how to run it and what it costs.

    train: the original model's configuration (its seed is replaced by each experiment seed).
    forget: "class:5" or "random:500" (parsed once, here); every method forgets the same split of each seed's
      original.
    methods: run after the retrained reference, in this order.
    hparams: per-method overrides as `--hp NAME=VALUE` strings, e.g. {"finetune": {"epochs": "5"}}.
    reference_hparams: overrides for the retrained reference (by default the original's recipe).
    tuning: per-method grids (`jaxunlearn.tuning.Tuning`, over `hparams`), tried on the first seed; the
      chosen configuration runs on every seed as `<method>-tuned`. Needs `train.validation_size`: the choice
      reads validation images, never test images.
    """

    name: str
    description: str
    train: TrainConfig
    forget: ForgetSpec
    methods: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    hparams: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    reference_hparams: dict[str, str] = dataclasses.field(default_factory=dict)
    pairing: Pairing = "default"
    relearn_steps: int = RelearnSettings.max_steps
    tuning: dict[str, Tuning] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "forget", as_forget_spec(self.forget))

    def check(self) -> None:
        """UserError for an unknown method or pairing, a method that cannot forget this way, overrides or
        tuning of unlisted methods, a tuning grid over budget, or tuning without validation images."""
        if self.pairing not in PAIRINGS:
            raise UserError(f"protocol {self.name}: unknown pairing {self.pairing!r}")
        for method in self.methods:
            get_method(method).check_mode(self.forget.mode)
        if REFERENCE in self.methods:
            raise UserError(f"protocol {self.name}: {REFERENCE} always runs as the reference; do not list it")
        unknown = set(self.hparams) - set(self.methods)
        if unknown:
            raise UserError(f"protocol {self.name}: hparams for methods it does not run: {', '.join(sorted(unknown))}")
        if not self.seeds:
            raise UserError(f"protocol {self.name}: no seeds")
        untuned = set(self.tuning) - set(self.methods)
        if untuned:
            raise UserError(f"protocol {self.name}: tuning for methods it does not run: {', '.join(sorted(untuned))}")
        if self.tuning and self.train.validation_size is None:
            raise UserError(f"protocol {self.name} tunes methods but holds out no validation images; set "
                            "train.validation_size (tuning reads no test data)")
        self.train.validate()
        tried = []
        for method, tuning in self.tuning.items():
            if not isinstance(tuning, Tuning):
                raise UserError(f"protocol {self.name}: the tuning of {method} must be a Tuning(...)")
            tuning.check(method)
            tried += [(method, {**self.hparams.get(method, {}), **configuration})
                      for configuration in tuning.configurations()]
        for method, overrides in ((REFERENCE, self.reference_hparams),
                                  *((method, self.hparams.get(method, {})) for method in self.methods), *tried):
            try:  # every configuration is resolved and validated before anything is trained
                override(get_method(method).default_hparams(self.forget.mode, self.train), overrides)
            except UserError as error:
                raise UserError(f"protocol {self.name}, {method}: {error}") from None


def load_protocol(path: str | Path) -> ExperimentProtocol:
    """The PROTOCOL defined by the Python file `path`; UserError when there is none."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no protocol file {path}")
    loader = importlib.machinery.SourceFileLoader(f"jaxunlearn_protocol_{path.stem}", str(path))
    spec = importlib.util.spec_from_file_location(loader.name, path, loader=loader)  # any suffix
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as error:  # the file is the user's code: any error is its own, in one line
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UserError(f"protocol file {path} fails to import: {type(error).__name__}: {detail}") from None
    protocol = getattr(module, "PROTOCOL", None)
    if not isinstance(protocol, ExperimentProtocol):
        raise UserError(f"{path} defines no PROTOCOL = ExperimentProtocol(...)")
    protocol.check()
    return protocol


def run_experiment(protocol: ExperimentProtocol, runs_dir: str | Path, out_dir: str | Path, *,
                   seeds: tuple[int, ...] | None = None, methods: tuple[str, ...] | None = None,
                   data_dir: str | None = None, execution: Execution = Execution()) -> dict[str, Any]:
    """Run (or resume) `protocol` for `seeds` and `methods` (default: the protocol's), then write the report.

    data_dir: where the dataset is on this machine, if not where the protocol says.
    Returns the results as in results.json: {"protocol": ..., "runs": {seed: {run name: metrics}},
    "tuning": {method: `jaxunlearn.tuning.tuning_record`}}.
    """
    protocol.check()
    seeds = protocol.seeds if seeds is None else seeds
    methods = protocol.methods if methods is None else methods
    unknown = set(methods) - set(protocol.methods)
    if unknown:
        raise UserError(f"protocol {protocol.name} has no method {', '.join(sorted(unknown))}")
    out = Path(out_dir)
    results_path = out / "results.json"
    _preflight(protocol, seeds, runs_dir, results_path, data_dir, execution)
    if not is_main_process():
        return _run_experiment(protocol, runs_dir, out, seeds, methods, data_dir, execution)
    with owned_directory(out, "`out`"):  # one experiment at a time writes results.json and the records
        return _run_experiment(protocol, runs_dir, out, seeds, methods, data_dir, execution)


def _run_experiment(protocol: ExperimentProtocol, runs_dir: str | Path, out: Path, seeds: tuple[int, ...],
                    methods: tuple[str, ...], data_dir: str | None, execution: Execution) -> dict[str, Any]:
    results_path = out / "results.json"
    results = _load_results(results_path, protocol)
    tuned = [method for method in methods if method in protocol.tuning]
    tuning_seed = protocol.seeds[0]
    untuned = [method for method in tuned if method not in results["tuning"]]
    if untuned and tuning_seed not in seeds:
        raise UserError(f"protocol {protocol.name} chooses the settings of {', '.join(untuned)} on seed "
                        f"{tuning_seed}; run that seed first (or with the others)")
    relearn = RelearnSettings(max_steps=protocol.relearn_steps)
    for seed in sorted(seeds, key=lambda s: s != tuning_seed):  # the tuning seed first: it makes the choices
        root = Path(runs_dir) / protocol.name / f"seed{seed}"
        record = out / "runs" / f"seed{seed}"
        done = results["runs"].setdefault(str(seed), {})
        original = root / "original"
        train_config = dataclasses.replace(protocol.train, seed=seed, data_dir=data_dir or protocol.train.data_dir)
        reference_config = UnlearnConfig(method=REFERENCE, forget=protocol.forget, hparams=protocol.reference_hparams,
                                         pairing=protocol.pairing, seed=seed, data_dir=data_dir)
        loaded: dict[str, Run] = {}  # the seed's original and reference, each loaded once they are done
        load = lambda name: loaded.setdefault(name, Run(root / name))

        def run_method(name: str, config: UnlearnConfig) -> None:
            """Unlearn with `config` into run `name` and evaluate it, unless results.json has it already."""
            if name in done:
                if not (record / f"{name}.json").is_file():  # recorded before records were kept as runs end
                    _write_record(record / f"{name}.json", unlearn_run_config(
                        config, original, [obtain_split(original, training_data(train_config), protocol.forget,
                                                        protocol.pairing, seed)]), runs_dir)
                return
            twin = identical_run(config, train_config, record, done)
            if twin is not None:  # the same run: a tuned configuration that is the default, or the chosen one
                _announce(f"{protocol.name} seed {seed}: {name} is {twin}'s configuration: its run is reused")
                if is_main_process() and (root / twin).is_dir():  # on a shared file system; the others wait
                    _copy_run(root / twin, root / name)
                done[name] = done[twin]
                _write_record(record / f"{name}.json", json.loads((record / f"{twin}.json").read_text()), None)
                _save(results, results_path)
                return
            _announce(f"{protocol.name} seed {seed}: {name}")
            started = time.perf_counter()
            unlearn(config, original, root / name, execution=execution)
            metrics = evaluate(root / name, reference=load(REFERENCE), original=load("original"),
                                   relearn=relearn)
            done[name] = {**metrics, "wall_seconds": time.perf_counter() - started}
            _write_record(record / f"{name}.json", Run(root / name).config, runs_dir)
            _save(results, results_path)

        def method_config(method: str, overrides: dict[str, str]) -> UnlearnConfig:
            return UnlearnConfig(method=method, forget=protocol.forget, hparams=overrides, pairing=protocol.pairing,
                                 seed=seed, data_dir=data_dir)

        lost = [name for name in ("original", REFERENCE) if name in done and not (root / name / "metrics.json").is_file()]
        if "original" not in done or "original" in lost:
            _announce(f"{protocol.name} seed {seed}: original" + (" (its run directory is gone: trained again)"
                                                                  if "original" in lost else ""))
            started = time.perf_counter()
            train(train_config, original, execution=execution)
            if "original" not in done:
                done["original"] = {"wall_seconds": time.perf_counter() - started}  # evaluated with the reference
                _save(results, results_path)
        _write_record(record / "original.json", Run(original).config, runs_dir)
        if REFERENCE in lost:
            _announce(f"{protocol.name} seed {seed}: {REFERENCE} (its run directory is gone: trained again)")
            unlearn(reference_config, original, root / REFERENCE, execution=execution)
        run_method(REFERENCE, reference_config)
        split = obtain_split(original, training_data(train_config), protocol.forget, protocol.pairing, seed)
        if lost:
            check_rebuilt({name: load(name) for name in lost}, split, done)
        if "test_acc" not in done["original"]:
            done["original"] = {**evaluate(load("original"), split, reference=load(REFERENCE), relearn=relearn),
                                "wall_seconds": done["original"]["wall_seconds"]}
            _save(results, results_path)
        if is_main_process():
            record.mkdir(parents=True, exist_ok=True)
            for split_file in sorted((original / "splits").glob("*.npz")):
                shutil.copyfile(split_file, record / split_file.name)
        for method in methods:
            run_method(method, method_config(method, protocol.hparams.get(method, {})))
        for method in tuned:
            defaults = protocol.hparams.get(method, {})
            if method not in results["tuning"]:  # on the tuning seed (checked above)
                configurations = protocol.tuning[method].configurations()
                for i, configuration in enumerate(configurations):
                    run_method(f"{method}-tune{i}", method_config(method, {**defaults, **configuration}))
                results["tuning"][method] = tuning_record(
                    configurations, [done[f"{method}-tune{i}"] for i in range(len(configurations))],
                    done[REFERENCE], seed)
                _save(results, results_path)
            run_method(f"{method}{TUNED}", method_config(method, {**defaults, **results["tuning"][method]["hparams"]}))
    if is_main_process():
        write_experiment_report(results, out)
    return results


def _copy_run(run: Path, to: Path) -> None:
    """Make run directory `to` a copy of `run`, holding `to`'s lock (whatever `to` held before goes)."""
    to.mkdir(parents=True, exist_ok=True)
    with RunLock(to):
        for child in to.iterdir():
            if child.name != LOCK_FILE:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        shutil.copytree(run, to, dirs_exist_ok=True, ignore=shutil.ignore_patterns(LOCK_FILE))


def check_rebuilt(rebuilt: dict[str, Run], split: Split, done: dict[str, Any]) -> None:
    """UserError unless each run trained again (its directory was gone) has the accuracies and confidences on
    `split` that results.json recorded for it: every other result was measured against that model."""
    for name, run in rebuilt.items():
        graphdef, params, batch_stats = run.model()
        measured = evaluate_model(graphdef, params, batch_stats, run.dataset, split, data=run.data,
                                  predict=run.predict, protocol=("accuracy", "probe", "bn_recomputed"))
        differs = sorted(key for key, value in measured.items()
                         if key.endswith(("_acc", "_conf")) and key in done[name] and value != done[name][key])
        if differs:
            key = differs[0]
            raise UserError(f"{run.path} was trained again but differs from the run the results were measured on "
                            f"({key} {measured[key]} vs {done[name][key]}): results.json belongs to another "
                            "machine or version; choose another `out` to start over")


def identical_run(config: UnlearnConfig, original: TrainConfig, record: Path, done: dict[str, Any]) -> str | None:
    """A finished run in `done` (the run names of one seed, whose configurations are under `record`) of the
    same method, split and resolved hyperparameters as `config`: the same run, which then need not run again.
    None if there is none."""
    resolved = json.loads(json.dumps(dataclasses.asdict(resolve_hparams(config, original))))
    wanted = _without_spelling(to_json(config))
    for name in done:
        path = record / f"{name}.json"
        if name == "original" or not path.is_file():
            continue
        recorded = json.loads(path.read_text())
        if recorded.get("hparams") == resolved and _without_spelling(recorded.get("config", {})) == wanted:
            return name
    return None


def _write_record(path: Path, config: dict[str, Any], runs_dir: str | Path | None) -> None:
    """Keep a finished run's configuration beside the results (its source relative to `runs_dir`), so that the
    results say how to reproduce every run even once the runs directory is gone."""
    if not is_main_process():
        return
    config = json.loads(json.dumps(config))
    path.parent.mkdir(parents=True, exist_ok=True)
    if runs_dir is not None and "source" in config:
        base = Path(runs_dir).resolve()
        if Path(config["source"]).is_relative_to(base):
            config["source"] = Path(config["source"]).relative_to(base).as_posix()
    write_json(path, config)


def _without_spelling(config: dict[str, Any]) -> dict[str, Any]:
    """An unlearning configuration without its raw overrides and data place (the resolved values decide)."""
    return {key: value for key, value in json.loads(json.dumps(config)).items() if key not in ("hparams", "data_dir")}


def _preflight(protocol: ExperimentProtocol, seeds: tuple[int, ...], runs_dir: str | Path, results_path: Path,
               data_dir: str | None, execution: Execution) -> None:
    """What can be refused before the first run: the devices, the output places, the dataset and the forget
    spec on it for every seed (the configurations are `ExperimentProtocol.check`'s)."""
    execution.mesh()
    check_writable(results_path, "`out`")
    check_writable(Path(runs_dir) / protocol.name / "seed0" / "original" / "config.json", "`runs_dir`")
    dataset = training_data(dataclasses.replace(protocol.train, data_dir=data_dir or protocol.train.data_dir))
    for seed in seeds:
        make_split(protocol.forget, dataset.train_labels, dataset.num_classes, pairing=protocol.pairing, seed=seed)


def _save(results: dict[str, Any], path: Path) -> None:
    if is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, results)


def _load_results(path: Path, protocol: ExperimentProtocol) -> dict[str, Any]:
    described = json.loads(json.dumps(to_json(protocol)))
    if not path.exists():
        return {"protocol": described, "runs": {}, "tuning": {}}
    results = json.loads(path.read_text())
    if _with_protocol_defaults(results.get("protocol")) != _with_protocol_defaults(described):
        raise UserError(f"{path} holds results of another protocol definition; choose another `out_dir`")
    return {"tuning": {}, **results, "protocol": described}


def _with_protocol_defaults(described: Any) -> Any:
    """A protocol as results.json describes it, with the defaults of fields it lacks (the protocol and its
    train configuration): results recorded before a field was added stay results of the same protocol."""
    if not isinstance(described, dict) or not isinstance(described.get("train"), dict):
        return described
    return {**with_defaults(described, ExperimentProtocol),
            "train": with_defaults(described["train"], TrainConfig)}


def write_experiment_report(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """report.md and plots over the seeds whose original is evaluated, with the methods every such seed has
    (a partly run experiment reports what it has; the notes say which seeds)."""
    protocol = results["protocol"]
    complete = [seed for seed, runs in results["runs"].items()
                if REFERENCE in runs and "test_acc" in runs.get("original", {})]
    if not complete:
        return []
    listed = [name for method in protocol["methods"] for name in (method, f"{method}{TUNED}")]
    names = ["original", REFERENCE, *(name for name in listed if all(name in results["runs"][seed] for seed in complete))]
    per_seed = {name: [results["runs"][seed][name] for seed in complete] for name in names}
    train_config = protocol["train"]
    notes = "\n".join([
        protocol["description"].strip(), "",
        f"Dataset `{train_config['dataset']}` (train size {train_config['train_size'] or 'all'}, "
        f"test size {train_config['test_size'] or 'all'}), {train_config['model']} width {train_config['width']}; "
        f"forget `{protocol['forget']}`, pairing `{protocol['pairing']}`; seeds {', '.join(complete)} "
        f"of {', '.join(str(s) for s in protocol['seeds'])}.",
        "Per-method overrides of the reference defaults: "
        + (", ".join(f"`{m}`: {', '.join(f'{k}={v}' for k, v in hp.items())}" for m, hp in protocol["hparams"].items())
           or "none") + ".",
        "`seconds` is the unlearning run's own training time (epochs and their per-epoch evaluation); "
        "`wall_seconds` in results.json adds set-up and the full evaluation.",
    ])
    return write_seed_report(per_seed, out_dir, title=f"Experiment {protocol['name']}", notes=notes,
                             appendix=tuning_section(results.get("tuning", {})))


def tuning_section(tuning: dict[str, Any]) -> str:
    """report.md's account of the tuning: per tuned method, every configuration tried with its accuracies,
    gaps' mean (the score) and the choice ("" when nothing was tuned)."""
    if not tuning:
        return ""
    seeds = sorted({record["seed"] for record in tuning.values()})
    lines = ["## Tuning", "",
             f"Each `<method>{TUNED}` row above runs the configuration chosen on seed {', '.join(map(str, seeds))} "
             f"among the ones below: the lowest score, the mean of |accuracy − {REFERENCE}'s| over "
             f"{', '.join(part.removesuffix('_acc') for part in SCORED_PARTS)} (validation: training images "
             "held out of every run; no test image is read). Accuracies in percent.", "",
             "| method | configuration | forget_train | retain_train | validation | score | |",
             "|---|---|---:|---:|---:|---:|---|"]
    for method, record in tuning.items():
        reference = record["reference"]
        lines.append(f"| {method} | *{REFERENCE}* | " + " | ".join(f"{100 * reference[p]:.2f}" for p in SCORED_PARTS)
                     + " | | |")
        for i, tried in enumerate(record["configurations"]):
            values = " | ".join("–" if tried[p] is None else f"{100 * tried[p]:.2f}" for p in SCORED_PARTS)
            chosen = "chosen" if i == record["chosen"] else ""
            setting = ", ".join(f"{k}={v}" for k, v in tried["hparams"].items())
            lines.append(f"| {method} | {setting} | {values} | {100 * tried['score']:.2f} | {chosen} |")
    return "\n".join(lines)


def _announce(message: str) -> None:
    if is_main_process():
        print(f"== {message}", file=sys.stderr, flush=True)
