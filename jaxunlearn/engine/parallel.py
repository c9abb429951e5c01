"""Devices and hosts: the 1-D `data` mesh, multi-process start, and moving arrays onto the mesh.

Every training step runs per device over the mesh axis `data` (`DATA_AXIS`): under `jax.shard_map` (default) or
`jax.pmap`. Parameters, optimizer state and the uint8 dataset are replicated; each device gathers its shard
of every batch from its own replica. With one device the axis has size 1 and the same code runs.
"""

import socket
import time
from dataclasses import dataclass
from typing import Any, Literal

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxunlearn.errors import UserError

DATA_AXIS = "data"
"""The name of the batch axis, used by the collectives of steps, losses and BatchNorm."""

MODEL_AXIS = "model"
"""The name of the axis of a run's K side-by-side models (`jaxunlearn.engine.ensemble`)."""

Backend = Literal["shard_map", "pmap"]
BACKENDS: tuple[str, ...] = ("shard_map", "pmap")
EpochLoop = Literal["auto", "scan", "steps"]
EPOCH_LOOPS: tuple[str, ...] = ("auto", "scan", "steps")


@dataclass(frozen=True)
class Execution:
    """How a run is laid out on the hardware; not part of its configuration (a run resumes on other devices).

    devices: how many of `jax.devices()` (all hosts) to use; None = all.
    backend: "shard_map" or "pmap" for the per-device step.
    epoch_loop: "scan" compiles each epoch as one `lax.scan`, "steps" runs a host loop over one compiled
      step, "auto" takes "steps" on CPU and "scan" on accelerators (engine/epoch.py says why).
    conv: the ResNets' convolutions in the training steps: "xla", "gemm" (matrix multiplications,
      `jaxunlearn.models.conv`) or "auto" (the faster on the platform; BENCHMARKS.md). Evaluation uses "xla".
    """

    devices: int | None = None
    backend: Backend = "shard_map"
    epoch_loop: EpochLoop = "auto"
    conv: str = "auto"
    models_per_device: int | None = None
    """For runs of several models: how many each device steps at once in one program (vmapped); the rest
    run one group after another. None: 1 on CPU (measured faster there, BENCHMARKS.md), all on
    accelerators."""
    data_placement: str = "auto"
    """"device": the uint8 dataset on every device, batches gathered inside the step; "stream": each process
    reads only its rows of every batch from the dataset's sources, ahead of the step; "auto": device when the
    images take at most half of a device's free memory (`jaxunlearn.data.placement`). Either takes the same
    steps."""

    def mesh(self) -> jax.sharding.Mesh:
        return data_mesh(self.devices)


COORDINATOR_TIMEOUT = 300
"""Seconds a process waits for the coordinator, and the coordinator for every process (JAX's default)."""


def initialize_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None,
                           *, auto: bool = False, timeout: int = COORDINATOR_TIMEOUT) -> None:
    """Start multi-process JAX before any other JAX call.

    With a coordinator "HOST:PORT", `num_processes` and `process_id` are required; `auto` calls
    `jax.distributed.initialize()` with no arguments (Cloud TPU, SLURM, Open MPI, Kubernetes detect
    themselves). Bad settings raise UserError, and so do a coordinator that process 0 cannot serve (its
    port taken), one another process cannot reach within `timeout` seconds, and processes that do not reach
    process 0 within `timeout` seconds: before JAX starts, every process says hello to process 0 on the
    coordinator port (JAX itself would abort the process after its timeout, with a C++ stack trace).
    """
    if coordinator is None:
        if num_processes is not None or process_id is not None:
            raise UserError("`num_processes` and `process_id` need a `coordinator` HOST:PORT")
        if auto:
            try:
                jax.distributed.initialize()
            except (ValueError, RuntimeError) as error:
                raise UserError(f"`distributed` found no cluster to join: {error}") from None
        return
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserError(f"`coordinator` must be HOST:PORT with a port in 1..65535, got {coordinator!r}")
    if num_processes is None or process_id is None:
        raise UserError("a `coordinator` needs `num_processes` and `process_id`")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise UserError(f"`process_id` must be in [0, {num_processes}), got {process_id}")
    if not 0 < timeout <= 86400:
        raise UserError(f"`coordinator_timeout` must be between 1 and 86400 seconds, got {timeout}")
    if process_id == 0:
        _gather_processes(int(port), num_processes, timeout)
    else:
        _join_coordinator(host.strip("[]"), int(port), process_id, timeout)
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=timeout)


HELLO = b"jaxunlearn process "
"""What a process sends process 0 on the coordinator port, followed by its id, before JAX starts."""


def _gather_processes(port: int, num_processes: int, timeout: int) -> None:
    """Process 0: serve the coordinator port until every other process has said hello, then free it for
    JAX. UserError when the port is taken, or naming the processes missing after `timeout` seconds (JAX itself
    would abort the process with a C++ stack trace)."""
    expected = set(range(1, num_processes))
    with socket.socket(socket.AF_INET) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind(("", port))
        except OSError as error:
            raise UserError(f"process 0 cannot serve the `coordinator` on port {port}: "
                            f"{error.strerror or error}") from None
        server.listen()
        deadline = time.monotonic() + timeout
        print(f"process 0: waiting up to {timeout} s for processes 1 to {num_processes - 1} on port {port}",
              flush=True)
        while expected:
            server.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                connection, _ = server.accept()
            except TimeoutError:
                raise UserError(f"processes {', '.join(map(str, sorted(expected)))} did not reach the "
                                f"`coordinator` within {timeout} s; start them, or raise "
                                f"`coordinator_timeout`") from None
            with connection:
                connection.settimeout(5.0)
                try:
                    message = connection.recv(64)
                    if message.startswith(HELLO) and message[len(HELLO):].isdigit():
                        expected.discard(int(message[len(HELLO):]))
                        connection.sendall(b"ok")
                        connection.recv(1)  # the peer closes first, so the port is free for JAX at once
                except OSError:
                    pass  # not one of ours, or gone: keep waiting for the others


def _join_coordinator(host: str, port: int, process_id: int, timeout: int) -> None:
    """Say hello to process 0 on host:port; UserError when it does not answer within `timeout` seconds. Says
    once that it waits, if process 0 does not answer the first time."""
    deadline = time.monotonic() + timeout
    waiting = False
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(5.0, deadline - time.monotonic()))) \
                    as connection:
                connection.sendall(HELLO + str(process_id).encode())
                if connection.recv(2) == b"ok":
                    return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise UserError(f"cannot reach the `coordinator` {host}:{port} within {timeout} s "
                                f"({error.strerror or error}); is process 0 running?") from None
        if time.monotonic() >= deadline:
            raise UserError(f"the `coordinator` {host}:{port} did not answer within {timeout} s; is it "
                            f"process 0 of this run?")
        if not waiting:
            print(f"process {process_id}: waiting up to {timeout} s for process 0 at {host}:{port}", flush=True)
            waiting = True
        time.sleep(0.2)


def data_mesh(devices: int | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh named `DATA_AXIS` over the first `devices` devices (all by default)."""
    available = jax.device_count()
    count = available if devices is None else devices
    if not 1 <= count <= available:
        raise UserError(f"`devices` must be between 1 and the {available} available, got {devices}")
    if count % jax.process_count():
        raise UserError(f"`devices` {count} must be a multiple of the {jax.process_count()} processes")
    # Take the same number of devices from every process, so that each host feeds its own.
    per_process = count // jax.process_count()
    chosen = [d for p in range(jax.process_count())
              for d in [d for d in jax.devices() if d.process_index == p][:per_process]]
    return jax.sharding.Mesh(np.asarray(chosen), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Explicit,))


def local_mesh() -> jax.sharding.Mesh:
    """A 1-device mesh on this process's first device (for work each process does alone)."""
    return jax.sharding.Mesh(np.asarray(jax.local_devices()[:1]), (DATA_AXIS,),
                             axis_types=(jax.sharding.AxisType.Explicit,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Place host or device arrays fully replicated on `mesh` (every process passes the same values)."""
    sharding = replicated(mesh)
    if not any(d.process_index != jax.process_index() for d in mesh.devices.flat):
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def shard_columns(block: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Place int [steps, B] arrays (the same on every process) with B split over the mesh.

    Each process transfers only the columns of its own devices.
    """
    sharding = NamedSharding(mesh, P(None, DATA_AXIS))

    def place(columns: np.ndarray) -> jax.Array:
        if mesh.devices.size == len(mesh.local_devices):
            return jax.device_put(columns, sharding)
        share = columns.shape[1] // jax.process_count()
        mine = columns[:, jax.process_index() * share:(jax.process_index() + 1) * share]
        return jax.make_array_from_process_local_data(sharding, mine, columns.shape)

    return {name: place(columns) for name, columns in block.items()}


PADDING_MASK = "real"
"""The plan column a padded block carries: int32 [steps, B], 1 for a real sample, 0 for a padding slot."""


def pad_to_devices(block: dict[str, np.ndarray], devices: int) -> dict[str, np.ndarray]:
    """Widen a block whose batch width B is not a multiple of `devices` to the next multiple.

    The padding slots repeat the block's first columns (so every index stays valid for the gather) and the
    block gains the column `PADDING_MASK`, 0 on them: the step excludes them from every loss, metric and
    BatchNorm statistic (`StepContext.mean`, `StepContext.mask`). A block that divides is returned as it is,
    without the column, so a run whose batches all divide compiles and computes exactly as before.
    """
    width = next(iter(block.values())).shape[1]
    if width % devices == 0:
        return block
    repeated = np.arange(-width % devices) % width
    padded = {name: np.concatenate([columns, columns[:, repeated]], axis=1) for name, columns in block.items()}
    steps = next(iter(block.values())).shape[0]
    real = np.broadcast_to(np.arange(width + len(repeated)) < width, (steps, width + len(repeated)))
    return {**padded, PADDING_MASK: real.astype(np.int32)}


def local_replica(tree: Any) -> Any:
    """This process's copy of a replicated tree, on its first local device (for evaluation and saving)."""
    device = jax.local_devices()[0]

    def one(x):
        if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:
            shard = next(s for s in x.addressable_shards if s.device == device) \
                if device in x.sharding.device_set else x.addressable_shards[0]
            return jax.device_put(shard.data, device)
        return x

    return jax.tree.map(one, tree)


def is_main_process() -> bool:
    """True on the process that writes logs, JSON and reports (process 0)."""
    return jax.process_index() == 0
