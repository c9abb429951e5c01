"""jaxunlearn: train an image classifier, unlearn a class or samples from it, evaluate against retraining.

The command line parses arguments into configs and calls the library (`jaxunlearn.runs`).

Bad input prints one line `jaxunlearn: error: ...` and exits with status 2.
"""

import argparse
import importlib
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from jaxunlearn.config import SupervisedHparams, TrainConfig, UnlearnConfig, parse_assignments
from jaxunlearn.data.splits import parse_forget
from jaxunlearn.engine.parallel import Execution, initialize_distributed, is_main_process
from jaxunlearn.errors import TrainingDiverged, UserError
from jaxunlearn.evaluation.relearn import RelearnSettings
from jaxunlearn.flags import build_parser


def _train(args: argparse.Namespace) -> None:
    from jaxunlearn.runs import train

    config = TrainConfig(
        dataset=args.dataset, data_dir=args.data_dir, model=args.model, width=args.width, seed=args.seed,
        train_size=args.train_size, test_size=args.test_size, depth=args.depth, precision=args.precision,
        validation_size=args.validation_size, eval_sample=args.eval_sample, dropout=args.dropout,
        recipe=SupervisedHparams(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                                 momentum=args.momentum, weight_decay=args.weight_decay, augment=args.augment,
                                 keep_partial_batch=args.keep_partial_batch),
    )
    metrics = train(config, args.workdir, execution=_execution(args), save_every_seconds=args.save_every)
    if not is_main_process():
        return
    print(f"train accuracy {metrics['train_acc']:.4f}  test accuracy {metrics['test_acc']:.4f}  "
          f"({metrics['seconds']:.1f} s, {metrics['steps']} steps) → {args.workdir}")


def _execution(args: argparse.Namespace) -> Execution:
    return Execution(devices=args.devices, backend=args.backend, epoch_loop=args.epoch_loop, conv=args.conv,
                     models_per_device=getattr(args, "models_per_device", None), data_placement=args.data_placement)


def _unlearn(args: argparse.Namespace) -> None:
    from jaxunlearn.runs import source_config, unlearn

    original = source_config(args.source)
    for flag, wanted, actual in (("--dataset", args.dataset, original.dataset), ("--model", args.model, original.model)):
        if wanted is not None and wanted != actual:
            raise UserError(f"{args.source} holds {original.model} trained on {original.dataset}; {flag} {wanted} does not match")
    config = UnlearnConfig(method=args.method, forget=args.forget, hparams=_method_overrides(args),
                           pairing=args.pairing, seed=args.seed, data_dir=args.data_dir, precision=args.precision)
    metrics = unlearn(config, args.source, args.workdir, execution=_execution(args),
                      save_every_seconds=args.save_every, allow_unfinished=args.allow_unfinished)
    if is_main_process():
        print(format_metrics(metrics))


def _method_overrides(args: argparse.Namespace) -> dict[str, str]:
    """--hp NAME=VALUE with --epochs, --batch-size and --lr folded in."""
    hparams = parse_assignments(args.hp)
    for name, value in (("epochs", args.epochs), ("batch_size", args.batch_size), ("learning_rate", args.lr)):
        if value is not None:
            hparams[name] = str(value)
    return hparams


def _audit(args: argparse.Namespace) -> None:
    from jaxunlearn.audit import AuditConfig, run_audit

    config = AuditConfig(method=args.method, forget=args.forget, models=args.models,
                         hparams=_method_overrides(args), seed=args.seed, pairing=args.pairing)
    summary = run_audit(config, args.source, args.workdir, execution=_execution(args))
    scored = summary["methods"][args.method]
    print(f"forget quality F at N = {summary['models']}: {args.method} {scored['forget_quality']:.4f} "
          f"(final score {scored['final_score']:.4f}); retrain vs retrain (floor) "
          f"{summary['floor']['forget_quality']:.4f}; original {summary['original']['forget_quality']:.4f}"
          f" → {Path(args.workdir) / 'audit.json'}")


def _ulira(args: argparse.Namespace) -> None:
    from jaxunlearn.audit import UliraConfig, run_ulira

    config = UliraConfig(method=args.method, audited=args.audited, shadows=args.shadows,
                         hparams=_method_overrides(args), seed=args.seed)
    results = run_ulira(config, args.source, args.workdir, execution=_execution(args))
    for name, attack in [*results["methods"].items(), ("retrain (the control)", results["floor"]),
                         ("original (no unlearning)", results["original"])]:
        print(f"{name:26s} balanced accuracy {attack['balanced_accuracy']:.3f} "
              f"[{attack['balanced_accuracy_low']:.3f}, {attack['balanced_accuracy_high']:.3f}]")
    print(Path(args.workdir) / "ulira.json")


def _evaluate(args: argparse.Namespace) -> None:
    from jaxunlearn.run import Run
    from jaxunlearn.runs import evaluate, obtain_split

    split = None
    if args.forget:
        dataset = Run(args.source).dataset
        split = obtain_split(args.source, dataset, parse_forget(args.forget), args.pairing, args.seed)
    if args.relearn_steps < 0:
        raise UserError(f"--relearn-steps must be >= 0, got {args.relearn_steps}")
    relearn = RelearnSettings(max_steps=args.relearn_steps)
    print(format_metrics(evaluate(args.source, split, reference=args.reference, relearn=relearn)))


def _report(args: argparse.Namespace) -> None:
    from jaxunlearn.compare import report_runs

    for path in report_runs(args.runs, args.out):
        print(path)


def _experiment(args: argparse.Namespace) -> None:
    from jaxunlearn.experiment import load_protocol, run_experiment

    protocol = load_protocol(args.protocol)
    out = args.out or str(Path("experiments") / "results" / protocol.name)
    seeds = None if args.seeds is None else tuple(_integers("--seeds", args.seeds))
    if seeds is not None and not set(seeds) <= set(protocol.seeds):
        raise UserError(f"--seeds must be among the protocol's {list(protocol.seeds)}")
    methods = None if args.methods is None else tuple(args.methods.split(","))
    run_experiment(protocol, args.runs_dir, out, seeds=seeds, methods=methods, data_dir=args.data_dir,
                   execution=_execution(args))
    if is_main_process():
        print(Path(out) / "report.md")


def _integers(flag: str, text: str) -> list[int]:
    try:
        return [int(item) for item in text.split(",")]
    except ValueError:
        raise UserError(f"{flag} must be comma-separated integers, got {text!r}") from None


def _demo(args: argparse.Namespace) -> None:
    from jaxunlearn.demo import run_demo

    run_demo(args.workdir, args.json)


def _bench(args: argparse.Namespace) -> None:
    import jax

    from jaxunlearn.bench import BenchConfig, format_report, run_bench
    from jaxunlearn.files import check_writable, write_json

    jax.config.update("jax_enable_compilation_cache", False)  # time real compilations, not cache reads
    if args.json:
        check_writable(args.json, "`json`")
    precisions = ("f32", "bf16") if args.precision == "both" else (args.precision,)
    convs = ("xla", "gemm") if args.conv == "both" else (args.conv,)
    config = BenchConfig(model=args.model, width=args.width, depth=args.depth, precisions=precisions, convs=convs,
                         batch=args.batch, image_size=args.image_size,
                         channels=args.channels, classes=args.classes, steps=args.steps,
                         execution=Execution(devices=args.devices, backend=args.backend, epoch_loop=args.epoch_loop),
                         repeats=args.repeats, seed=args.seed, models=args.models,
                         profile=args.profile)
    result = run_bench(config)
    if is_main_process():
        print(format_report(result))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            write_json(args.json, result)


def format_metrics(metrics: dict) -> str:
    """One `name value` line per metric."""
    return "\n".join(f"{name:18s} {value:.4f}" if isinstance(value, float) else f"{name:18s} {value}"
                     for name, value in metrics.items())


def _configure_libraries() -> None:
    """Quiet library logging, and keep every compiled XLA program on disk across runs
    (JAX_COMPILATION_CACHE_DIR overrides the place): even a program that compiles fast is traced, lowered
    and compiled again otherwise, and a warm run is faster with all of them cached (BENCHMARKS.md)."""
    import jax
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # library warnings (Orbax, TFDS) would bury our own messages
    if not jax.config.jax_compilation_cache_dir:
        cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        jax.config.update("jax_compilation_cache_dir", str(cache_home / "jaxunlearn" / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def check_backend() -> None:
    """UserError, in one line, when JAX cannot start a backend (JAX_PLATFORMS naming a platform this machine
    lacks, an accelerator runtime that fails): JAX would raise it from inside the command's first device use."""
    import jax

    try:
        jax.devices()
    except (RuntimeError, AssertionError, ValueError) as error:
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else "no backend initialised"
        platforms = os.environ.get("JAX_PLATFORMS")
        raise UserError(f"JAX cannot start a backend{f' for JAX_PLATFORMS={platforms}' if platforms else ''}: "
                        f"{detail} (is that platform's jaxlib plugin installed?)") from None


def load_plugins(modules: Sequence[str]) -> None:
    """Import each of `modules` (from the working directory or the Python path): a user's methods
    (`jaxunlearn.register`), models (`register_model`) and datasets (`register_dataset`) register themselves
    when imported. UserError for a module that cannot be imported, in one line."""
    if modules and "" not in sys.path:
        sys.path.insert(0, "")
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as error:  # the user's code: any error is its own
            detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise UserError(f"plugin {name} fails to import: {type(error).__name__}: {detail}") from None


def check_xla_flags() -> None:
    """UserError when XLA_FLAGS is set and XLA would refuse it: XLA reads it when JAX starts and aborts the
    process with a fatal log line. A short process that starts JAX on the CPU with the same flags tells first
    (about a second, only when XLA_FLAGS is set)."""
    if not os.environ.get("XLA_FLAGS", "").strip():
        return
    probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], capture_output=True, text=True,
                           env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
    if probe.returncode == 0:
        return
    lines = [line for line in probe.stderr.splitlines() if "XLA_FLAGS" in line] or probe.stderr.splitlines()[-1:]
    reason = lines[0].split("] ", 1)[-1].strip() if lines else f"exit status {probe.returncode}"
    raise UserError(f"XLA_FLAGS is not valid: {reason}")


FLAGS = {"source": "--from", "split": "--forget", "out_dir": "--out"}
"""The flags whose names differ from the library parameters they set."""


def in_flags(message: str) -> str:
    """A library error in the CLI's words: each `parameter` named in backticks becomes its flag."""
    return re.sub(r"`([a-z_]+)`", lambda m: FLAGS.get(m.group(1), "--" + m.group(1).replace("_", "-")), message)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (2 for bad input, argument errors included)."""
    try:
        args = build_parser(__doc__.splitlines()[0]).parse_args(argv)
    except SystemExit as stop:  # argparse has printed its one line (or the help)
        return stop.code if isinstance(stop.code, int) else 2
    handlers = {"train": _train, "unlearn": _unlearn, "evaluate": _evaluate, "report": _report, "demo": _demo,
                "bench": _bench, "experiment": _experiment, "audit": _audit,
                "ulira": _ulira}
    try:
        load_plugins(args.plugin)
        check_xla_flags()
        if "coordinator" in args:
            initialize_distributed(args.coordinator, args.num_processes, args.process_id, auto=args.distributed,
                                   timeout=args.coordinator_timeout)
        _configure_libraries()
        check_backend()
        handlers[args.command](args)
    except UserError as error:
        print(f"jaxunlearn: error: {in_flags(str(error))}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"jaxunlearn: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("jaxunlearn: interrupted; the last complete checkpoint is kept", file=sys.stderr)
        return 130
    except OSError as error:  # the system refuses a path given (too long, no space, not allowed)
        where = f": {error.filename}" if error.filename else ""
        print(f"jaxunlearn: error: {error.strerror or error}{where}", file=sys.stderr)
        return 2
    except Exception as error:  # a failure no check foresaw: one line; the traceback when asked for
        if os.environ.get("JAXUNLEARN_TRACEBACK"):
            raise
        detail = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        print(f"jaxunlearn: internal error: {type(error).__name__}: {detail} (JAXUNLEARN_TRACEBACK=1 shows "
              f"where; please report it)", file=sys.stderr)
        return 1
    return 0


def entry() -> None:
    """Console-script entry point.

    After an error it exits without interpreter teardown: Orbax's background threads would otherwise print
    tracebacks of their abandoned reads below the one error line.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if code:
        os._exit(code)


if __name__ == "__main__":
    entry()
