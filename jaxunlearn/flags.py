"""The command line's flags: their types (each refuses a bad value in one line), the groups several commands
share, and the parser of every command (`build_parser`). The commands' work is `jaxunlearn.cli`'s."""

import argparse
import math

from jaxunlearn.config import MAX_COUNT, SupervisedHparams
from jaxunlearn.data.placement import PLACEMENTS
from jaxunlearn.data.splits import PAIRINGS
from jaxunlearn.engine.parallel import BACKENDS, COORDINATOR_TIMEOUT, EPOCH_LOOPS
from jaxunlearn.evaluation.relearn import RelearnSettings

def _flag_type(convert: type, accept, rule: str):
    """An argparse type: the text converted by `convert` (int or float), refused unless `accept(value)`;
    `rule` says what is accepted."""
    kind = "an integer" if convert is int else "a number"

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value
    return parse


_integer = _flag_type(int, lambda value: 0 <= value <= MAX_COUNT, f"between 0 and {MAX_COUNT}")
"""A count or size flag (each command checks its own lower bound)."""
_seed = _flag_type(int, lambda value: 0 <= value < 2**32, "an integer in [0, 2^32)")
_finite = _flag_type(float, math.isfinite, "a finite number")
_seconds = _flag_type(float, lambda value: value >= 0, "a number of seconds >= 0")
"""A time interval (inf: never before the end)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"jaxunlearn: error: {message}\n")


def _add_execution_flags(parser: argparse.ArgumentParser, *, conv: bool = True) -> None:
    group = parser.add_argument_group("devices and hosts")
    group.add_argument("--devices", type=_integer, help="use the first N devices of all hosts (default: all)")
    group.add_argument("--backend", choices=BACKENDS, default="shard_map",
                       help="per-device step under jax.shard_map (default) or jax.pmap")
    group.add_argument("--epoch-loop", choices=EPOCH_LOOPS, default="auto",
                       help="an epoch as one compiled lax.scan or a host loop over one compiled step (default "
                            "auto: steps on CPU, where XLA runs convolution gradients in loops slowly; scan elsewhere)")
    if conv:
        group.add_argument("--conv", choices=("auto", "xla", "gemm"), default="auto",
                           help="the ResNets' convolutions in the training steps: XLA's, or as matrix "
                                "multiplications (default auto: the faster on this platform, BENCHMARKS.md)")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="multi-process run: process 0's address")
    group.add_argument("--num-processes", type=_integer, help="multi-process run: number of processes")
    group.add_argument("--process-id", type=_integer, help="multi-process run: this process's index")
    group.add_argument("--coordinator-timeout", type=_integer, default=COORDINATOR_TIMEOUT, metavar="SECONDS",
                       help="multi-process run: how long to wait for the coordinator and the other processes "
                            "(default %(default)s)")
    group.add_argument("--distributed", action="store_true",
                       help="call jax.distributed.initialize() with auto-detection (Cloud TPU, SLURM, MPI)")
    group.add_argument("--data-placement", choices=PLACEMENTS, default="auto",
                       help="device: the dataset on every device; stream: each process reads its rows of every "
                            "batch ahead of the step; auto (default): device when it takes at most half the free "
                            "device memory")


def _add_hparam_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("the method's hyperparameters (default: the method's own, docs/methods.md)")
    group.add_argument("--epochs", type=_integer, help="epoch cap (contrastive) or epoch count (other methods)")
    group.add_argument("--batch-size", type=_integer)
    group.add_argument("--lr", type=_finite)
    group.add_argument("--hp", action="append", default=[], metavar="NAME=VALUE",
                       help="set any hyperparameter of the method (repeatable), e.g. --hp lambda_ul=1")


def _add_models_per_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-per-device", type=_integer,
                        help="models each device steps at once, vmapped (default: 1 on CPU, all elsewhere)")


MODEL_HELP = "resnet18 | resnet34 | resnet50 | resnet101 | vit_small (default resnet18)"
WIDTH_HELP = "channel width multiplier; for vit_small, of its dim 384 (default 1)"
DEPTH_HELP = "vit_small's number of transformer blocks (default 12)"
PRECISION_HELP = "f32, or bf16: bfloat16 forward and backward passes, float32 parameters and loss (default f32)"


def build_parser(description: str) -> argparse.ArgumentParser:
    """The parser of `jaxunlearn` and every command."""
    parser = _Parser(prog="jaxunlearn", description=description)
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (repeatable): your methods, models and datasets register "
                             "themselves there and every command can use them; the working directory is searched")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    defaults = SupervisedHparams()

    train = commands.add_parser("train", help="train the original model")
    train.add_argument("--dataset", default="digits", help="digits | fashion_mnist | a prepared TFDS name")
    train.add_argument("--data-dir", help="directory of the dataset files (Fashion-MNIST IDX or TFDS data_dir)")
    train.add_argument("--model", default="resnet18", help=MODEL_HELP)
    train.add_argument("--width", type=_finite, default=1.0, help=WIDTH_HELP)
    train.add_argument("--depth", type=_integer, help=DEPTH_HELP)
    train.add_argument("--precision", choices=("f32", "bf16"), default="f32", help=PRECISION_HELP)
    train.add_argument("--train-size", type=_integer, help="train on a fixed stratified subset of about N images")
    train.add_argument("--test-size", type=_integer, help="evaluate on a fixed stratified subset of about N images")
    train.add_argument("--validation-size", type=_integer,
                       help="hold out a fixed stratified set of about N training images that no run trains on")
    train.add_argument("--eval-sample", type=_integer,
                       help="evaluate every run of this original on at most N images of each part (a fixed sample)")
    train.add_argument("--epochs", type=_integer, default=defaults.epochs)
    train.add_argument("--batch-size", type=_integer, default=defaults.batch_size)
    train.add_argument("--lr", type=_finite, default=defaults.learning_rate)
    train.add_argument("--momentum", type=_finite, default=defaults.momentum)
    train.add_argument("--weight-decay", type=_finite, default=defaults.weight_decay)
    train.add_argument("--augment", action="store_true",
                       help="random crop (4 px padding) and horizontal flip of the training images (default off)")
    train.add_argument("--keep-partial-batch", action="store_true",
                       help="end each epoch with the partial batch left over, as the official code (default: drop it)")
    train.add_argument("--dropout", type=_finite, default=0.0, help="the model's dropout rate in training (default 0)")
    train.add_argument("--seed", type=_seed, default=0)
    train.add_argument("--workdir", required=True)
    train.add_argument("--save-every", type=_seconds, default=60.0, metavar="SECONDS",
                       help="checkpoint after an epoch once this long has passed since the last one (default 60)")
    _add_execution_flags(train)

    unlearn = commands.add_parser("unlearn", help="apply an unlearning method to a trained model")
    unlearn.add_argument("--method", required=True, help="the method's name (docs/methods.md)")
    unlearn.add_argument("--forget", required=True, help="class:C[,C...] or random:N")
    unlearn.add_argument("--from", dest="source", required=True, help="the training run's workdir")
    unlearn.add_argument("--workdir", required=True)
    unlearn.add_argument("--save-every", type=_seconds, default=60.0, metavar="SECONDS",
                         help="checkpoint after an epoch once this long has passed since the last one (default 60)")
    unlearn.add_argument("--pairing", choices=PAIRINGS, default="default",
                         help="official: the official code's splits and retain pairing")
    unlearn.add_argument("--seed", type=_seed, default=0, help="seed of the split and of retain sampling")
    _add_hparam_flags(unlearn)
    unlearn.add_argument("--data-dir", help="where the dataset is now, if it moved since training")
    unlearn.add_argument("--dataset", help="refuse to run unless the checkpoint was trained on this dataset")
    unlearn.add_argument("--model", help="refuse to run unless the checkpoint holds this model")
    unlearn.add_argument("--precision", choices=("f32", "bf16"), default="f32", help=PRECISION_HELP)
    unlearn.add_argument("--allow-unfinished", action="store_true",
                         help="unlearn an original whose training has not reached its last epoch (refused otherwise)")
    _add_execution_flags(unlearn)

    evaluate = commands.add_parser("evaluate", help="evaluate a run and write its metrics.json")
    evaluate.add_argument("--from", dest="source", required=True, help="a run's workdir")
    evaluate.add_argument("--forget", help="for a training run: the split to evaluate the forget metrics on")
    evaluate.add_argument("--pairing", choices=PAIRINGS, default="default")
    evaluate.add_argument("--seed", type=_seed, default=0)
    evaluate.add_argument("--reference", help="the retrained run of the same split: adds divergences from it")
    evaluate.add_argument("--relearn-steps", type=_integer, default=RelearnSettings.max_steps, metavar="N",
                          help="cap of the relearn-time fine-tuning (default %(default)s)")

    report = commands.add_parser("report", help="evaluate runs of one experiment and write a report with plots")
    report.add_argument("runs", nargs="+", help="run directories (the original is found from them)")
    report.add_argument("--out", required=True, help="directory for report.md and the PNG plots")

    experiment = commands.add_parser("experiment", help="run a protocol for every method and seed (resumable)")
    experiment.add_argument("protocol", help="a protocol file, e.g. experiments/protocols/digits_class5.py")
    experiment.add_argument("--runs-dir", default="runs", help="where the runs go (default: runs)")
    experiment.add_argument("--out", help="results, report and plots (default: experiments/results/<protocol>)")
    experiment.add_argument("--seeds", help="comma-separated subset of the protocol's seeds")
    experiment.add_argument("--methods", help="comma-separated subset of the protocol's methods")
    experiment.add_argument("--data-dir", help="where the dataset is on this machine (TFDS data_dir or IDX directory)")
    _add_execution_flags(experiment)

    audit = commands.add_parser("audit", help="the NeurIPS 2023 challenge score of a method: N unlearnings "
                                              "against N retrainings, with its retrain-vs-retrain floor")
    audit.add_argument("--from", dest="source", required=True, help="the original model's training run")
    audit.add_argument("--forget", required=True, help="class:C[,C...] or random:N")
    audit.add_argument("--method", required=True, help="the method to audit (docs/methods.md)")
    audit.add_argument("--models", type=_integer, required=True, metavar="N",
                       help="models per arm: N unlearnings, N retrainings, N more for the floor, N originals")
    audit.add_argument("--workdir", required=True, help="the arms' runs and audit.json (shared by methods)")
    audit.add_argument("--seed", type=_seed, default=0, help="seed of the split (random:N)")
    audit.add_argument("--pairing", choices=PAIRINGS, default="default")
    _add_hparam_flags(audit)
    _add_models_per_device_flag(audit)
    _add_execution_flags(audit)

    lira = commands.add_parser("ulira", help="U-LiRA: can a likelihood-ratio attack tell an unlearned example "
                                            "from one never seen? (shadow models on halves of the data)")
    lira.add_argument("--from", dest="source", required=True, help="the original model's training run (its setup)")
    lira.add_argument("--method", required=True, help="the method to audit (it must support sample forgetting)")
    lira.add_argument("--audited", type=_integer, required=True, metavar="T",
                      help="audited training examples (even); each shadow holds and forgets T/2 of them")
    lira.add_argument("--shadows", type=_integer, required=True, metavar="S",
                      help="shadow models (even, >= 8), a quarter of them held out as targets")
    lira.add_argument("--workdir", required=True, help="the shadows' runs and ulira.json (shared by methods)")
    lira.add_argument("--seed", type=_seed, default=0, help="seed of the audited examples and the halves")
    _add_hparam_flags(lira)
    _add_models_per_device_flag(lira)
    _add_execution_flags(lira)

    demo = commands.add_parser("demo", help="train, forget digit 5 with CU, retrain, print the table")
    demo.add_argument("--json", help="also write the results as JSON to this path")
    demo.add_argument("--workdir", help="keep the runs here (default: a temporary directory)")

    bench = commands.add_parser("bench", help="time the compiled CU and train steps on synthetic data")
    bench.add_argument("--model", default="resnet18", help=MODEL_HELP)
    bench.add_argument("--width", type=_finite, default=1.0, help=WIDTH_HELP)
    bench.add_argument("--depth", type=_integer, help=DEPTH_HELP)
    bench.add_argument("--precision", choices=("f32", "bf16", "both"), default="f32",
                       help="time the steps in float32, bfloat16 compute, or both (default f32)")
    bench.add_argument("--conv", choices=("auto", "xla", "gemm", "both"), default="auto",
                       help="the ResNets' convolutions: auto (the faster on this platform), xla, gemm, or both timed")
    bench.add_argument("--batch", type=_integer, default=64,
                       help="B: the CU step takes B forget + B retain images, the train step 2B (default 64)")
    bench.add_argument("--image-size", type=_integer, default=32, help="height and width of the images (default 32)")
    bench.add_argument("--channels", type=_integer, default=3)
    bench.add_argument("--classes", type=_integer, default=10)
    bench.add_argument("--steps", type=_integer, default=5, help="optimizer steps per timed call, one compiled scan")
    bench.add_argument("--repeats", type=_integer, default=5, help="timed calls after one warm-up call (median)")
    bench.add_argument("--seed", type=_seed, default=0, help="seed of the model, the images and the batches")
    bench.add_argument("--models", type=_integer, default=1, metavar="K",
                       help="also time K models side by side, one after another and vmapped (default 1: off)")
    bench.add_argument("--profile", action="store_true",
                       help="also trace the timed calls and print where XLA's time goes, by kind of work")
    bench.add_argument("--json", help="also write every figure as JSON to this path")
    _add_execution_flags(bench, conv=False)  # its own --conv can time both
    return parser
