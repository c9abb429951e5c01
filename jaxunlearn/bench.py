"""`jaxunlearn bench`: time the compiled CU and train steps of real runs on synthetic data.

Both step kinds run through the epoch function of real runs (`make_epoch_fn` + `place_blocks` on
`data_mesh(devices)`): one call runs `steps` SGD steps with the state donated, as one compiled `lax.scan`
or as a host loop over the compiled step (`epoch_loop`; "auto" = steps on CPU, scan elsewhere). The CU step
takes B forget images (all of class 0) + B retain images (the other classes) through the contrastive
unlearning loss with CU's optimizer; the train step takes 2B images through the supervised loss with the
pretraining optimizer, so both see 2B images per step. The images are uniform random uint8, made on device.

FLOPs come from XLA's cost analysis of the compiled programs. That analysis counts a while-loop body once,
not once per trip (checked on XLA:CPU, jaxlib 0.12.0.1: a 1-, 2- and 8-step scan report the same FLOPs;
`HloCostAnalysis::HandleWhile` says so), so the count of the timed `steps`-step program is NOT `steps` times
a step's. The bench takes the FLOPs of one step from a 1-step compilation of the same epoch (a second
compilation unless `steps` is 1, or the loop is "steps" where the compiled unit is one step), unambiguous
whatever a backend does with loops, and records the ratio of the compiled unit's count to it
(`loop_flops_ratio`: 1 = loop body counted once or no loop, `steps` = counted per trip).
XLA counts 2 FLOPs per multiply-add of a convolution's non-padding taps, plus the elementwise work.
Under `shard_map` and `pmap` the compiled program is one device's: FLOPs and memory are per device, and
the model FLOPs of a step are the per-device count times the device count.

MFU (model FLOPs utilisation) is the achieved FLOP/s over the peak of the devices that ran the step: the
datasheet's dense figure for the run's precision on a known accelerator, the measured float32 GEMM rate of the
machine on CPU (`jaxunlearn.peak_flops`); a chip the table does not know gets no figure, and the report says so.
"""

import itertools
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxunlearn.config import MAX_WIDTH, SupervisedHparams, check_precision
from jaxunlearn.data.splits import ForgetSpec, Split, make_split
from jaxunlearn.engine.ensemble import (
    make_ensemble, make_models_epoch_fn, place_group, place_group_blocks, stack, stack_plans,
)
from jaxunlearn.engine.epoch import Block, make_epoch_fn, place_blocks, resolve_loop
from jaxunlearn.engine.step import LossFn, make_train_step
from jaxunlearn.engine.parallel import (
    DATA_AXIS, BACKENDS, EPOCH_LOOPS, EpochLoop, Execution, local_replica, replicate,
)
from jaxunlearn.engine.state import create_state
from jaxunlearn.errors import UserError
from jaxunlearn.methods.base import Context
from jaxunlearn.methods.contrastive import Contrastive, ContrastiveHparams
from jaxunlearn.methods.supervised import supervised_loss, supervised_optimizer
from jaxunlearn.models import MODELS, create_model
from jaxunlearn.models.conv import resolve_conv
from jaxunlearn.peak_flops import devices_peak, mfu
from jaxunlearn.xla_profile import CATEGORIES, profile_program

StepKind = Literal["cu", "train"]
STEP_KINDS: tuple[str, ...] = get_args(StepKind)
FORGET_CLASS = 0
MEAN, STD = 0.5, 0.25
"""Per-channel normalisation of the synthetic images (any fixed values do)."""


@dataclass(frozen=True)
class BenchConfig:
    """What to time. batch is B: the CU step takes B forget + B retain images, the train step 2B.

    execution: the devices, the backend and the epoch loop (`Execution`; its `conv`, `models_per_device` and
    `data_placement` are the bench's own to vary: `convs`, `models`; the data is device-resident); steps: optimizer steps per timed call; repeats: timed calls after one warm-up call.
    models: K > 1 also times K models side by side (`jaxunlearn.engine.ensemble`), one after another and
    vmapped, each step of each model on the same batch size. precisions: each is timed ("f32", "bf16"); convs:
    each implementation of the ResNets' convolutions is timed ("auto", "xla", "gemm"; `jaxunlearn.models.conv`).
    profile: also trace `repeats` calls and sum XLA's op times by kind of work (`jaxunlearn.xla_profile`).
    """

    model: str = "resnet18"
    width: float = 1.0
    depth: int | None = None
    precisions: tuple[str, ...] = ("f32",)
    convs: tuple[str, ...] = ("auto",)
    batch: int = 64
    image_size: int = 32
    channels: int = 3
    classes: int = 10
    execution: Execution = Execution()
    steps: int = 5
    repeats: int = 5
    seed: int = 0
    models: int = 1
    profile: bool = False

    @property
    def images_per_step(self) -> int:
        return 2 * self.batch


def check_config(config: BenchConfig, available_devices: int) -> None:
    """Raise UserError (one line) for a configuration the bench cannot run."""
    if config.model not in MODELS:
        raise UserError(f"unknown model {config.model!r}; choose one of: {', '.join(MODELS)}")
    if not config.precisions or len(set(config.precisions)) < len(config.precisions):
        raise UserError(f"`precisions` must name each precision once, got {list(config.precisions)}")
    for precision in config.precisions:
        check_precision(precision)
    if not config.convs or len({resolve_conv(conv) for conv in config.convs}) < len(config.convs):
        raise UserError(f"`convs` must name each implementation once, got {list(config.convs)}")
    if config.depth is not None and config.depth < 1:
        raise UserError(f"`depth` must be >= 1, got {config.depth}")
    if config.execution.backend not in BACKENDS:
        raise UserError(f"unknown backend {config.execution.backend!r}; choose from {', '.join(BACKENDS)}")
    if config.execution.epoch_loop not in EPOCH_LOOPS:
        raise UserError(f"unknown epoch loop {config.execution.epoch_loop!r}; choose from {', '.join(EPOCH_LOOPS)}")
    if not (math.isfinite(config.width) and 0 < config.width <= MAX_WIDTH):
        raise UserError(f"`width` must be in (0, {MAX_WIDTH}], got {config.width}")
    for name in ("batch", "image_size", "channels", "steps", "repeats"):
        if getattr(config, name) < 1:
            raise UserError(f"`{name}` must be >= 1, got {getattr(config, name)}")
    if config.classes < 2:
        raise UserError(f"`classes` must be >= 2 (class 0 is forgotten, the others retained), got {config.classes}")
    devices = available_devices if config.execution.devices is None else config.execution.devices
    if not 1 <= devices <= available_devices:
        raise UserError(f"`devices` must be between 1 and the {available_devices} available, got {devices}")
    if config.models < 1:
        raise UserError(f"`models` must be >= 1, got {config.models}")
    if config.models > 1:
        make_ensemble(config.models, config.execution)


def synthetic_labels(config: BenchConfig) -> np.ndarray:
    """int32 [classes·2B]: 2B images of every class, so a step can draw B distinct forget images."""
    return (np.arange(config.classes * 2 * config.batch) % config.classes).astype(np.int32)


def synthetic_images(config: BenchConfig, count: int) -> jax.Array:
    """uint8 [count, H, W, C], uniform random, made on the default device from `config.seed`."""
    shape = (count, config.image_size, config.image_size, config.channels)
    return jax.random.randint(jax.random.key(config.seed), shape, 0, 256, jnp.int32).astype(jnp.uint8)


def step_plans(config: BenchConfig, split: Split) -> dict[str, Block]:
    """Step kind → index block of `steps` steps: CU {forget, retain: int32 [steps, B]}, train {train:
    int32 [steps, 2B]}; each row draws distinct images, from a fixed seed."""
    rng = np.random.default_rng(config.seed)

    def draw(pool: np.ndarray, width: int) -> np.ndarray:
        return np.stack([rng.permutation(pool)[:width] for _ in range(config.steps)]).astype(np.int32)

    everything = np.concatenate([split.forget, split.retain])
    return {
        "cu": {"forget": draw(split.forget, config.batch), "retain": draw(split.retain, config.batch)},
        "train": {"train": draw(everything, config.images_per_step)},
    }


def step_procedures(config: BenchConfig, split: Split, labels: np.ndarray
                    ) -> dict[str, tuple[LossFn, optax.GradientTransformation]]:
    """Step kind → (loss, optimizer) as real runs build them: CU's official defaults for class forgetting
    with B_u = B_r = B; pretraining's recipe with batch 2B."""
    method = Contrastive()
    hparams = ContrastiveHparams(batch_size=config.batch)
    context = Context(split=split, num_classes=config.classes, pairing="default", seed=config.seed,
                      train_labels=labels, image_shape=(config.image_size, config.image_size, config.channels),
                      mean=(MEAN,) * config.channels, std=(STD,) * config.channels)
    cu_tx, _ = method.optimizer(hparams, config.steps, None)
    train_tx, _ = supervised_optimizer(SupervisedHparams(batch_size=config.images_per_step), config.steps)
    return {"cu": (method.loss_fn(hparams, context), cu_tx), "train": (supervised_loss, train_tx)}


def cost_flops(compiled: jax.stages.Compiled) -> float:
    """FLOPs of a compiled program per XLA's cost analysis (one device's program; a loop body once)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):  # older jaxlibs: one dict per program
        analysis = analysis[0]
    return float(analysis["flops"])


def compiled_memory(compiled: jax.stages.Compiled) -> dict[str, int]:
    """Bytes of one device's program per XLA's memory analysis; peak = arguments + outputs + temporaries −
    aliased (donated arguments reused as outputs)."""
    stats = compiled.memory_analysis()
    parts = {"argument_bytes": stats.argument_size_in_bytes, "output_bytes": stats.output_size_in_bytes,
             "temp_bytes": stats.temp_size_in_bytes, "alias_bytes": stats.alias_size_in_bytes}
    parts = {name: int(value) for name, value in parts.items()}
    parts["peak_bytes"] = parts["argument_bytes"] + parts["output_bytes"] + parts["temp_bytes"] - parts["alias_bytes"]
    return parts


def device_peak_bytes(device: jax.Device) -> int | None:
    """The allocator's peak bytes in use on `device` since the process started (GPU/TPU); None on CPU."""
    stats = device.memory_stats()
    return None if not stats or "peak_bytes_in_use" not in stats else int(stats["peak_bytes_in_use"])


def param_checksum(params: nnx.State) -> float:
    """Σ|p| over every parameter, in float64: equal runs agree on it to rounding."""
    return float(sum(np.abs(np.asarray(leaf, np.float64)).sum() for leaf in jax.tree.leaves(params)))


def compile_epoch(config: BenchConfig, mesh: jax.sharding.Mesh, model: nnx.Module, data: tuple[jax.Array, jax.Array],
                  loss_fn: LossFn, tx: optax.GradientTransformation, block: Block) -> tuple:
    """Build and compile the epoch of one step kind over `block`, as `bench_step` times it.

    data: (uint8 images [N, H, W, C], int32 labels [N]) replicated on `mesh`. Returns (epoch function, its
    placed state, placed blocks, the compiled program, its compile seconds, FLOPs of one step on one device).
    """
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    mean, std = (MEAN,) * config.channels, (STD,) * config.channels
    epoch_fn = make_epoch_fn(graphdef, tx, loss_fn, mean, std, mesh, config.execution.backend,
                              loop=config.execution.epoch_loop)
    state = replicate(create_state(params, batch_stats, tx), mesh)
    blocks = place_blocks([block], mesh, config.execution.backend)
    one_step = place_blocks([{name: columns[:1] for name, columns in block.items()}], mesh, config.execution.backend)

    start = time.perf_counter()
    compiled = epoch_fn.lower(state, *data, None, blocks, 0).compile()
    compile_seconds = time.perf_counter() - start
    single = compiled if config.steps == 1 or epoch_fn.loop == "steps" else \
        epoch_fn.lower(state, *data, None, one_step, 0).compile()
    return epoch_fn, state, blocks, compiled, compile_seconds, cost_flops(single)


def bench_step(config: BenchConfig, mesh: jax.sharding.Mesh, model: nnx.Module, data: tuple[jax.Array, jax.Array],
               loss_fn: LossFn, tx: optax.GradientTransformation, block: Block) -> dict[str, Any]:
    """Compile and time one step kind: one warm-up call, then `repeats` timed calls of `steps` steps each.

    data: (uint8 images [N, H, W, C], int32 labels [N]) replicated on `mesh`. Returns its figures.
    """
    epoch_fn, state, blocks, compiled, compile_seconds, step_flops = compile_epoch(
        config, mesh, model, data, loss_fn, tx, block)
    losses: list[float] = []
    seconds_per_call = []
    for call in range(1 + config.repeats):  # the first call warms up
        start = time.perf_counter()
        state, metrics = epoch_fn(state, *data, None, blocks, 0)
        jax.block_until_ready((state, metrics))
        if call:
            seconds_per_call.append(time.perf_counter() - start)
        losses.extend(np.asarray(jax.device_get(local_replica(metrics))["loss"], np.float64).tolist())
    seconds_per_step = statistics.median(seconds_per_call) / config.steps
    model_flops = step_flops * mesh.devices.size
    figures = {
        "images_per_step": config.images_per_step,
        "ms_per_step": 1e3 * seconds_per_step,
        "ms_per_step_per_call": [1e3 * s / config.steps for s in seconds_per_call],
        "images_per_second": config.images_per_step / seconds_per_step,
        "compile_seconds": compile_seconds,
        "memory_per_device": compiled_memory(compiled),
        "device_peak_bytes": device_peak_bytes(mesh.local_devices[0]),
        "flops_per_step_per_device": step_flops,
        "flops_per_step": model_flops,
        "flops_per_second": model_flops / seconds_per_step,
        "loop_flops_ratio": cost_flops(compiled) / step_flops,
        "losses": losses,
        "param_checksum": param_checksum(local_replica(state).params),
    }
    if config.profile:  # after the checksum: the traced calls take more steps
        def call():
            nonlocal state
            state, metrics = epoch_fn(state, *data, None, blocks, 0)
            return state, metrics
        figures["profile"] = profile_program(call, compiled, config.repeats, steps_per_call=config.steps)
    return figures


def bench_models(config: BenchConfig, model: nnx.Module, data: tuple[jax.Array, jax.Array], loss_fn: LossFn,
                 tx: optax.GradientTransformation, block: Block) -> dict[str, Any]:
    """Time K = config.models models stepping side by side, laid out two ways on the devices: "one after
    another" (each device steps one model at a time, the groups in turn) and "vmapped" (each device steps
    all of its models in one program). Every model starts from the same parameters and takes `block`.

    Returns {layout: {"models_per_device", "ms_per_model_step", "model_steps_per_second", "compile_seconds"}}:
    the median over `repeats` timed calls (after one warm-up) of the time for every model to take `steps`
    steps, per model-step.
    """
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    mean, std = (MEAN,) * config.channels, (STD,) * config.channels
    state = stack([create_state(params, batch_stats, tx)] * config.models)
    blocks = stack_plans([[block]] * config.models)
    train_step = make_train_step(graphdef, tx, loss_fn, mean, std)
    layouts = {}
    devices = make_ensemble(config.models, Execution(devices=config.execution.devices)).devices
    for layout in ("one_after_another", "vmapped"):
        ensemble = make_ensemble(config.models, Execution(
            devices=devices, models_per_device=1 if layout == "one_after_another" else config.models // devices))
        loop = resolve_loop(config.execution.epoch_loop, ensemble.mesh)
        epoch_fn = make_models_epoch_fn(train_step, ensemble, loop)
        images, labels = jax.device_put(data, NamedSharding(ensemble.mesh, P()))
        groups = [place_group(jax.tree.map(lambda x: x[models], state), ensemble) for models in ensemble.groups()]
        group_blocks = [place_group_blocks([{n: c[models] for n, c in b.items()} for b in blocks], ensemble, loop)
                        for models in ensemble.groups()]
        active = place_group(np.ones(ensemble.group_size, bool), ensemble)
        seconds = []
        for _ in range(1 + config.repeats):  # the first call compiles and warms up
            start = time.perf_counter()
            for g in range(len(groups)):
                groups[g], _ = epoch_fn(groups[g], images, labels, None, group_blocks[g], 0, active)
            jax.block_until_ready(groups)
            seconds.append(time.perf_counter() - start)
        first_call, seconds = seconds[0], seconds[1:]
        per_model_step = statistics.median(seconds) / (config.steps * config.models)
        layouts[layout] = {"models_per_device": ensemble.per_device, "devices": ensemble.devices,
                           "ms_per_model_step": 1e3 * per_model_step,
                           "model_steps_per_second": 1 / per_model_step,
                           "first_call_seconds": first_call}
    return layouts


def environment(mesh: jax.sharding.Mesh, epoch_loop: EpochLoop) -> dict[str, Any]:
    """Versions, hardware, the epoch loop that ran ("auto" resolved) and XLA flags the figures were taken with."""
    device = mesh.devices.flat[0]
    return {"epoch_loop": resolve_loop(epoch_loop, mesh),
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "backend": jax.default_backend(),
        "device_kind": device.device_kind, "devices": int(mesh.devices.size),
        "devices_available": jax.device_count(), "processes": jax.process_count(),
        "cpu_count": os.cpu_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def bench_model(config: BenchConfig, precision: str, conv: str) -> nnx.Module:
    """A fresh model of `config` in `precision` with the `conv` convolutions, from `config.seed`."""
    return create_model(config.model, config.classes, in_channels=config.channels,
                        image_size=(config.image_size,) * 2, width=config.width, depth=config.depth, seed=config.seed,
                        bn_axis_name=DATA_AXIS, precision=precision, conv=conv)


def prepare(config: BenchConfig) -> tuple[jax.sharding.Mesh, tuple[jax.Array, jax.Array], dict[str, Block], dict]:
    """Check `config` (UserError) and build what both step kinds take: (mesh, synthetic (images, labels)
    replicated on it, step kind → index block (`step_plans`), step kind → (loss, optimizer))."""
    check_config(config, jax.device_count())
    mesh = config.execution.mesh()
    labels = synthetic_labels(config)
    split = make_split(ForgetSpec("class", classes=(FORGET_CLASS,)), labels, config.classes)
    data = replicate((synthetic_images(config, len(labels)), labels), mesh)
    return mesh, data, step_plans(config, split), step_procedures(config, split, labels)


def model_step_flops(config: BenchConfig, kind: StepKind, precision: str = "f32") -> float:
    """XLA's FLOPs of one `kind` step of `config` on all its devices, as the bench reports them
    (`flops_per_step`), from a compilation alone: nothing runs."""
    mesh, data, plans, procedures = prepare(config)
    block = {name: columns[:1] for name, columns in plans[kind].items()}
    model = bench_model(config, precision, config.convs[0])
    return compile_epoch(config, mesh, model, data, *procedures[kind], block)[-1] * mesh.devices.size


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Time the CU and the train step of `config`; bad input raises UserError.

    Returns {"config", "environment", "steps": {kind: figures}}; see `bench_step` for the figures, plus "mfu"
    (model FLOPs utilisation against the peak of the devices, `jaxunlearn.peak_flops`; None where no peak is
    known, and then `environment["peak"][precision]["basis"]` says so), also per layout of `--models`.
    Compile times are true compilations only if no persistent compilation cache serves them (the CLI
    turns the cache off).
    """
    mesh, data, plans, procedures = prepare(config)
    peaks = {precision: devices_peak(list(mesh.devices.flat), precision) for precision in config.precisions}
    figures = {}
    for precision, conv in itertools.product(config.precisions, config.convs):
        for kind in STEP_KINDS:
            loss_fn, tx = procedures[kind]
            name = " ".join([kind] + ([precision] if precision != "f32" else [])
                            + ([resolve_conv(conv)] if len(config.convs) > 1 else []))
            step = figures[name] = bench_step(config, mesh, bench_model(config, precision, conv), data, loss_fn, tx,
                                              plans[kind])
            step["mfu"] = mfu(step["flops_per_second"], peaks[precision])
            if config.models > 1:  # a model of its own: the step donated the first one's buffers
                step["models"] = bench_models(config, bench_model(config, precision, conv), data, loss_fn, tx,
                                              plans[kind])
                for layout in step["models"].values():  # each model-step takes one model's step FLOPs
                    layout["mfu"] = mfu(step["flops_per_step"] * layout["model_steps_per_second"],
                                        devices_peak(jax.local_devices()[:layout["devices"]], precision))
    return {"config": asdict(config), "environment": environment(mesh, config.execution.epoch_loop)
            | {"convs": [resolve_conv(conv) for conv in config.convs], "peak": peaks}, "steps": figures}


def format_mfu(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def format_report(result: dict[str, Any]) -> str:
    """A readable table of `run_bench`'s result."""
    config, env = result["config"], result["environment"]
    size = f"{config['image_size']}×{config['image_size']}×{config['channels']}"
    depth = "" if config.get("depth") is None else f", depth {config['depth']}"
    lines = [
        f"{config['model']} width {config['width']:g}{depth}, {size}, {config['classes']} classes, "
        f"{config['steps']} steps per call, median of {config['repeats']} calls after 1 warm-up",
        f"CU step: {config['batch']} forget + {config['batch']} retain images; train step: "
        f"{2 * config['batch']} images (same images per step)",
        f"jax {env['jax']}, {env['backend']} ({env['device_kind']}) × {env['devices']} of "
        f"{env['devices_available']} devices, {config['execution']['backend']}, {env['epoch_loop']} loop, "
        f"{'/'.join(env.get('convs', ['xla']))} convolutions, {env['cpu_count']} CPUs, "
        f"XLA_FLAGS={env['xla_flags'] or '(none)'}",
        "",
        f"{'step':10s} {'ms/step':>9s} {'images/s':>9s} {'compile s':>9s} {'peak MiB':>9s} "
        f"{'GFLOP/step':>10s} {'GFLOP/s':>8s} {'MFU':>6s}",
    ]
    for kind, figures in result["steps"].items():
        lines.append(
            f"{kind:10s} {figures['ms_per_step']:9.1f} {figures['images_per_second']:9.1f} "
            f"{figures['compile_seconds']:9.1f} {figures['memory_per_device']['peak_bytes'] / 2**20:9.1f} "
            f"{figures['flops_per_step'] / 1e9:10.3f} {figures['flops_per_second'] / 1e9:8.1f} "
            f"{format_mfu(figures['mfu']):>6s}"
        )
    lines.append("peak MiB: XLA's memory analysis of one device's program (arguments + outputs + temporaries − "
                 "donated); GFLOP: XLA's cost analysis, all devices")
    for precision, peak in env["peak"].items():
        total = "" if peak["flops_per_second"] is None else f" = {peak['flops_per_second'] / 1e12:.3g} TFLOP/s"
        lines.append(f"MFU ({precision}): GFLOP/s over the peak, {peak['basis']}{total}")
    if config.get("profile"):
        lines += ["", "XLA's trace, ms per step by kind of work (summed over threads; % of the traced op time)",
                  f"{'step':10s} {'traced':>7s} " + " ".join(f"{c:>16s}" for c in CATEGORIES)]
        for kind, figures in result["steps"].items():
            profile = figures["profile"]
            total = sum(profile["op_ms_per_step"].values()) or 1.0
            cells = [f"{ms:7.1f} ({100 * ms / total:3.0f}%)" for ms in profile["op_ms_per_step"].values()]
            lines.append(f"{kind:10s} {profile['ms_per_step']:7.1f} " + " ".join(f"{c:>16s}" for c in cells))
    if config.get("models", 1) > 1:
        lines += ["", f"{config['models']} models side by side: ms per model-step (model-steps/s)"]
        for kind, figures in result["steps"].items():
            cells = [f"{layout.replace('_', ' ')} ({f['models_per_device']}/device on {f['devices']}) "
                     f"{f['ms_per_model_step']:.1f} ({f['model_steps_per_second']:.1f}, MFU {format_mfu(f['mfu'])})"
                     for layout, f in figures["models"].items()]
            lines.append(f"{kind:10s} " + "; ".join(cells))
    return "\n".join(lines)
