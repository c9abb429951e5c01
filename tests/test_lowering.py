"""Every compiled program of the library lowers for NVIDIA GPUs and TPUs, from this CPU-only jaxlib.

Each program is exported with `jax.export` for the platforms ("cuda", "tpu") at once (one module that takes
the platform as an argument: versioned StableHLO bytecode); nothing is compiled. Export runs JAX's lowering
rules of every primitive for both platforms and refuses any custom call that is not stable across jaxlib
versions, so a program that exports here lowers there; compiling the StableHLO is XLA's work on the device
and is not checked. What is exported (digits-sized 8×8×1 images throughout):

- every registered method's epoch (`make_epoch_fn`) under `jax.shard_map` (the default backend), with the
  method setup of tests/test_method_contract.py (`SMALL`): the scanned form (loop="scan": the whole epoch,
  the plan's first block cut to 2 steps) and the stepped form (loop="steps": one step of each kind of block
  of the plan, by its columns, and padded to the devices where its width does not divide); and its
  many-model program (`make_models_epoch_fn`, scanned, 2 models vmapped per device, 16 models on 8 devices:
  each device runs the program that steps 2 models on 1 device, the mesh adds only the model axis's
  layout). Float32 on jaxunlearn.testing.small_model on 1 device and on 8; bf16 on vit_small (width 0.0625, depth 1)
  on 8 (its per-device program is the 1-device one plus the reductions over devices);
- the CU and train steps of `jaxunlearn.bench` (contrastive and supervised losses) on ResNet-18 at width
  0.0625, float32 and bf16, as shapes only (`nnx.eval_shape`): both epoch forms under `jax.pmap` on 8
  devices (below), and the streamed step (`make_epoch_fn(..., streamed=True)`: the batch arrives as an
  argument, split over the devices) on 1 device and on 8;
- the evaluation program (`jaxunlearn.evaluation.accuracy._predict_padded`) of that ResNet-18, in both
  precisions, on one device: evaluation runs on each process's first device, never over a mesh.

pmap. `jax.export` takes only a `jax.jit` function and refuses a pmapped one ("must be the result of
`jit`"). In jax 0.12 `jax.pmap(f)` is `jax.jit(jax.shard_map(f', mesh of its devices, in/out specs from
in_axes/out_axes))` (jax/_src/pmap.py, `_cached_shard_map`), and that jit is what a pmapped call runs. The
test takes it out of the pmapped function (`pmap_jit`: the `infer_params` closure of the pmapped function's
`lower`) and exports it with the shardings pmap gives it: the exported program is the one pmap runs,
argument for argument, not a hand-made equivalent.

Host callbacks. Two steps call back to the host: the progress bar inside the epoch (`StepProgress`:
`jax.debug.callback` under `lax.cond`, added only when stderr is a terminal on process 0) and the public
`make_step`'s label check (`check_label_values`, unless check_labels=False). Neither can be exported, on any
platform: `jax.export` does not serialise host callbacks ("serialization of host_callbacks is not yet
implemented", even for cpu); a callback is lowered with the client of the target platform, which a CPU-only
jaxlib does not have (ValueError "the platform for the specified backend cpu is different from the lowering
platform cuda"); and a module for two platforms at once fails inside JAX before it gets there (a TypeError
in `mlir.lower_per_platform`, jax 0.12.0.1; JAX would then refuse with "multi-platform lowering for
python_callback"). They do lower for cuda and for tpu: given a client (the CPU client stands in, patched into
JAX's `mlir.ModuleContext.get_backend`), the callback's lowering rule emits the GPU host-callback custom call
for cuda and host send/recv for tpu, on 1 and 8 devices. So no platform needs a path of its own: the harness
lowers and compiles the callbacks on the accelerator itself, and a program meant to be exported is built
without them through the switches that exist (`on_step=None`, `check_labels=False`), as every export here is.

JAX internals read here: the pmap closure above, `xla_bridge.get_backend` and `mlir.ModuleContext` (jax
0.12.0.1, pinned in pyproject.toml).
"""

import inspect
import re

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax import export
from jax._src import xla_bridge
from jax._src.interpreters import mlir
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxunlearn.bench import (
    FORGET_CLASS, MEAN, STD, STEP_KINDS, BenchConfig, step_plans, step_procedures, synthetic_labels,
)
from jaxunlearn.data.device import DeviceData
from jaxunlearn.data.sources import load_dataset
from jaxunlearn.data.splits import ForgetSpec, make_split
from jaxunlearn.engine.ensemble import (
    make_ensemble, make_models_epoch_fn, place_group, place_group_blocks, stack, stack_plans,
)
from jaxunlearn.engine.epoch import StepProgress, make_epoch_fn, place_blocks
from jaxunlearn.engine.parallel import DATA_AXIS, Execution, data_mesh, replicate
from jaxunlearn.engine.state import create_state
from jaxunlearn.engine.step import make_step, make_train_step
from jaxunlearn.evaluation.accuracy import CHUNK, _predict_padded
from jaxunlearn.methods import METHODS
from jaxunlearn.methods.base import BUILT_IN
from jaxunlearn.methods.supervised import supervised_loss
from jaxunlearn.models import create_model
from jaxunlearn.testing import setup as method_setup, small_model
from test_method_contract import SMALL

PLATFORMS = ("cuda", "tpu")
DEVICE_COUNTS = (1, 8)
MODELS_PER_DEVICE = 2
SCANNED_STEPS = 2
"""Steps kept of each block in a scanned epoch: the scan's length changes nothing in its lowering."""


def vit_bf16(num_classes: int, seed: int):
    return create_model("vit_small", num_classes, in_channels=1, image_size=(8, 8), width=0.0625, depth=1,
                        seed=seed, bn_axis_name=DATA_AXIS, precision="bf16")


def resnet(precision: str, num_classes: int = 10):
    return create_model("resnet18", num_classes, in_channels=1, image_size=(8, 8), width=0.0625, bn_axis_name=DATA_AXIS,
                        precision=precision)


METHOD_MODELS = {"f32": small_model, "bf16": vit_bf16}
"""The model every method is exported with, by precision."""


@pytest.fixture(scope="module")
def digits():
    dataset = load_dataset("digits", None)
    return dataset, DeviceData.from_dataset(dataset)


def export_for_accelerators(jitted, *args, **kwargs) -> export.Exported:
    """`jitted` exported for `PLATFORMS`."""
    return export.export(jitted, platforms=PLATFORMS)(*args, **kwargs)


def assert_lowered(exported: export.Exported, devices: int, precision: str) -> str:
    """The exported module runs on `devices` devices and computes in `precision`; returns its text."""
    text = exported.mlir_module()
    assert exported.platforms == PLATFORMS and exported.nr_devices == devices
    if devices > 1:  # the gradient's and the BatchNorm statistics' reduction over the devices
        assert "stablehlo.all_reduce" in text
    convolutions = re.findall(r"stablehlo\.(?:convolution|dot_general)[^\n]*", text)
    assert convolutions
    if precision == "bf16":
        assert any("bf16" in op for op in convolutions)
    else:
        assert "bf16" not in text
    return text


def while_loops(text: str) -> int:
    return text.count("stablehlo.while")


def first_rows(block: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    return {name: columns[:rows] for name, columns in block.items()}


def pmap_jit(pmapped, *args):
    """(the `jax.jit` a pmapped function runs for `args`, with pmap's shardings; its flat arguments)."""
    infer_params = inspect.getclosurevars(pmapped.lower).nonlocals["infer_params"]
    cached, _, flat_args, *_ = infer_params(*args)
    return cached.jitted_f_with_shardings, flat_args


def export_epoch(epoch_fn, backend: str, state, images, labels, aux, blocks) -> export.Exported:
    """The compiled unit of a resident epoch: the whole scanned epoch, or one step on the first row."""
    args = (state, images, labels, aux, blocks, 0) if epoch_fn.loop == "scan" else \
        (state, images, labels, aux, {name: columns[0] for name, columns in blocks[0].items()}, 0)
    if backend == "pmap":
        jitted, flat_args = pmap_jit(epoch_fn.compiled, *args)
        return export_for_accelerators(jitted, *flat_args)
    return export_for_accelerators(epoch_fn.compiled, *args)


def distinct_steps(plan, devices: int) -> list[dict[str, np.ndarray]]:
    """One step of each kind in `plan`: of each set of columns, full and padded to the devices (`pad_to_devices`)
    where a block's width does not divide by them."""
    kinds = {}
    for block in plan:
        kinds.setdefault((tuple(sorted(block)), len(next(iter(block.values()))[0]) % devices == 0),
                         first_rows(block, 1))
    return list(kinds.values())


@pytest.mark.parametrize("precision", ["f32", "bf16"])
@pytest.mark.parametrize("name", [name if name == "contrastive" else pytest.param(name, marks=pytest.mark.slow)
                                  for name in BUILT_IN])  # CU's in `make test`, the baselines' in `make test-long`
def test_every_method_exports_for_gpu_and_tpu(name, precision, digits):
    """Each method's epoch, scanned and stepped (float32 on 1 and 8 devices, bf16 on 8), and its many-model
    program."""
    dataset, data = digits
    forget, overrides = SMALL[name]
    ready = method_setup(METHODS[name], forget, overrides, dataset, data, build=METHOD_MODELS[precision])
    plan, loss_fn, tx, state, aux, graphdef = ready.plan, ready.loss_fn, ready.tx, ready.state, ready.aux, ready.graphdef
    scanned_plan = [first_rows(plan[0], SCANNED_STEPS)]
    for devices in DEVICE_COUNTS if precision == "f32" else (8,):
        mesh = data_mesh(devices)
        placed = replicate((state, data.train_images, data.train_labels, aux), mesh)
        scanned = export_epoch(make_epoch_fn(graphdef, tx, loss_fn, data.mean, data.std, mesh, loop="scan"),
                               "shard_map", *placed, place_blocks(scanned_plan, mesh, "shard_map"))
        scanned_text = assert_lowered(scanned, devices, precision)
        stepped = make_epoch_fn(graphdef, tx, loss_fn, data.mean, data.std, mesh, loop="steps")
        for block in distinct_steps(plan, devices):
            text = assert_lowered(export_epoch(stepped, "shard_map", *placed, place_blocks([block], mesh, "shard_map")),
                                  devices, precision)
            if set(block) == set(plan[0]):  # the scanned epoch is a loop over this step
                assert while_loops(scanned_text) == while_loops(text) + 1

    # Many models: 2 per device vmapped, 16 models on 8 devices (each device's program is the one that steps
    # 2 models on 1 device; the mesh adds only the layout of the model axis).
    count = 8 * MODELS_PER_DEVICE
    ensemble = make_ensemble(count, Execution(devices=8, models_per_device=MODELS_PER_DEVICE))
    epoch_fn = make_models_epoch_fn(make_train_step(graphdef, tx, loss_fn, data.mean, data.std), ensemble, "scan")
    images, labels = jax.device_put((data.train_images, data.train_labels), NamedSharding(ensemble.mesh, P()))
    models = place_group(stack([state] * count), ensemble)
    models_aux = None if aux is None else place_group(stack([aux] * count), ensemble)
    blocks = place_group_blocks(stack_plans([scanned_plan] * count), ensemble, "scan")
    exported = export_for_accelerators(epoch_fn.compiled, models, images, labels, models_aux, blocks, 0,
                                       place_group(np.ones(count, bool), ensemble))
    assert_lowered(exported, 8, precision)
    assert exported.out_avals[-1].shape == (SCANNED_STEPS, count)  # a metric per step and model
    assert all(aval.shape[0] == count for aval in exported.in_avals[:len(jax.tree.leaves(state))])


RESNET_BENCH = BenchConfig(model="resnet18", width=0.0625, batch=8, image_size=8, channels=1, steps=SCANNED_STEPS)
"""The bench's CU step (B = 8 forget + 8 retain images) and train step (16 images) on ResNet-18 at width 0.0625,
8×8×1 images: the losses, optimizers and index plans of `jaxunlearn.bench`."""


def on_mesh(tree, mesh: jax.sharding.Mesh, spec: P = P()):
    """The shapes and dtypes of `tree`'s arrays, laid out on `mesh` by `spec`."""
    sharding = NamedSharding(mesh, spec)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


@pytest.fixture(scope="module", params=["f32", "bf16"])
def resnet_steps(request):
    """(precision, graphdef, {kind: (state, loss, optimizer, block [2 steps, B])}, images [N, 8, 8, 1] uint8,
    labels int32 [N]) of `RESNET_BENCH`; the model, its state and the images are shapes only (`nnx.eval_shape`:
    export needs no values, and ResNet-18's eager initialisation takes 11 s on this CPU)."""
    labels = synthetic_labels(RESNET_BENCH)
    split = make_split(ForgetSpec("class", classes=(FORGET_CLASS,)), labels, RESNET_BENCH.classes)
    plans, procedures = step_plans(RESNET_BENCH, split), step_procedures(RESNET_BENCH, split, labels)
    graphdef, params, batch_stats = nnx.split(nnx.eval_shape(lambda: resnet(request.param)), nnx.Param, nnx.BatchStat)
    steps = {kind: (jax.eval_shape(lambda p, b: create_state(p, b, tx), params, batch_stats), loss_fn, tx, plans[kind])
             for kind, (loss_fn, tx) in procedures.items()}
    images = jax.ShapeDtypeStruct((len(labels), 8, 8, 1), np.uint8)
    return request.param, graphdef, steps, images, labels


@pytest.mark.parametrize("kind", STEP_KINDS)
def test_cu_and_train_steps_export_under_pmap_and_streamed(kind, resnet_steps):
    """Both epoch forms under pmap on 8 devices; the streamed step under shard_map on 1 and 8."""
    precision, graphdef, steps, images, labels = resnet_steps
    state, loss_fn, tx, block = steps[kind]
    normalisation = ((MEAN,), (STD,))
    mesh = data_mesh(8)
    for loop in ("scan", "steps"):
        epoch_fn = make_epoch_fn(graphdef, tx, loss_fn, *normalisation, mesh, "pmap", loop=loop)
        exported = export_epoch(epoch_fn, "pmap", state, images, labels, None, place_blocks([block], mesh, "pmap"))
        assert_lowered(exported, 8, precision)

    # Streamed: each step's batch, role → (uint8 images [B, 8, 8, 1], labels [B]), split over the devices.
    width = len(next(iter(block.values()))[0])
    batch = {role: (jax.ShapeDtypeStruct((width, 8, 8, 1), np.uint8), jax.ShapeDtypeStruct((width,), np.int32))
             for role in block}
    for devices in DEVICE_COUNTS:
        mesh = data_mesh(devices)
        epoch_fn = make_epoch_fn(graphdef, tx, loss_fn, *normalisation, mesh, streamed=True)
        columns = {name: columns[0] for name, columns in place_blocks([block], mesh, "shard_map")[0].items()}
        exported = export_for_accelerators(epoch_fn.compiled, on_mesh(state, mesh), on_mesh(batch, mesh, P(DATA_AXIS)),
                                           None, columns, 0)
        assert_lowered(exported, devices, precision)
        streamed_images = [aval.shape for aval in exported.in_avals if aval.dtype == np.uint8]
        assert streamed_images == [(width, 8, 8, 1)] * len(block)  # the batch's images only, no resident set


def test_evaluation_exports_for_gpu_and_tpu(resnet_steps):
    """`_predict_padded` on one device: logits and embeddings of 2 chunks of images gathered by index."""
    precision, graphdef, steps, images, _ = resnet_steps
    state = steps["train"][0]
    indices = np.arange(2 * CHUNK, dtype=np.int32) % images.shape[0]
    exported = export_for_accelerators(_predict_padded, state.params, state.batch_stats, images, indices,
                                       graphdef=graphdef, mean=(MEAN,), std=(STD,))
    assert_lowered(exported, 1, precision)
    assert [aval.shape for aval in exported.out_avals] == [(2 * CHUNK, 10), (2 * CHUNK, 128)]


def test_host_callbacks_lower_for_cuda_and_tpu_but_do_not_export(digits, monkeypatch):
    """The progress bar's callback (scanned epoch, 1 and 8 devices) and the public step's label check (jit, and
    per device under the caller's `jax.shard_map` on 8 devices): the module docstring's findings, one by one."""
    dataset, data = digits
    graphdef, params, batch_stats = nnx.split(small_model(dataset.num_classes), nnx.Param, nnx.BatchStat)
    tx = optax.sgd(0.1, momentum=0.9)
    state = create_state(params, batch_stats, tx)
    plan = [{"train": np.arange(2 * 64, dtype=np.int32).reshape(2, 64)}]
    images = np.zeros((64, 8, 8, 1), np.float32)
    batch = {"train": (images, data.train_labels[:64])}

    programs = []  # (name, jitted with callbacks, jitted without, its arguments)
    for devices in DEVICE_COUNTS:
        mesh = data_mesh(devices)
        epoch = lambda on_step: make_epoch_fn(graphdef, tx, supervised_loss, data.mean, data.std, mesh,
                                              on_step=on_step, loop="scan").compiled
        args = (*replicate((state, data.train_images, data.train_labels), mesh), None,
                place_blocks(plan, mesh, "shard_map"), 0)
        programs.append((f"progress on {devices}", epoch(StepProgress("test", 2)), epoch(None), args, devices))
    step = lambda check_labels: jax.jit(make_step(graphdef, tx, supervised_loss, check_labels=check_labels))
    programs.append(("label check", step(True), step(False), (state, batch), 1))
    mesh = data_mesh(8)
    sharded = lambda check_labels: jax.jit(jax.shard_map(
        make_step(graphdef, tx, supervised_loss, axis="shard_map", check_labels=check_labels), mesh=mesh,
        in_specs=(P(), P(DATA_AXIS)), out_specs=(P(), P())))
    programs.append(("label check on 8", sharded(True), sharded(False),
                     (replicate(state, mesh), jax.device_put(batch, NamedSharding(mesh, P(DATA_AXIS)))), 8))

    for name, with_callback, without, args, devices in programs:
        assert_lowered(export_for_accelerators(without, *args), devices, "f32")
        # A module for both platforms fails inside JAX (list + tuple in `lower_per_platform`, jax 0.12.0.1).
        with pytest.raises(TypeError, match="can only concatenate list"):
            export.export(with_callback, platforms=PLATFORMS)(*args)
        for platform in PLATFORMS:  # a callback needs the target platform's client
            with pytest.raises(ValueError, match=f"backend cpu is different from the lowering platform {platform}"):
                export.export(with_callback, platforms=(platform,))(*args)
        with pytest.raises(NotImplementedError, match="serialization of host_callbacks is not yet implemented"):
            export.export(with_callback, platforms=("cpu",))(*args)

    # Given a client of the platform (the CPU client stands in), the callbacks lower for cuda and for tpu.
    cpu_client = xla_bridge.get_backend("cpu")
    monkeypatch.setattr(mlir.ModuleContext, "get_backend", lambda self, optional=False: cpu_client)
    for name, with_callback, _, args, _ in programs:
        cuda = with_callback.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
        assert "xla_ffi_python_gpu_callback" in cuda, name
        tpu = with_callback.trace(*args).lower(lowering_platforms=("tpu",)).as_text()
        assert "stablehlo.send" in tpu and "stablehlo.recv" in tpu, name
