"""Orbax checkpoints of a run: params, batch_stats, opt_state and JSON metadata per saved epoch.

Layout: `RUN/checkpoints/<epoch>/{params,batch_stats,opt_state,meta}` (no batch_stats for a model without
BatchNorm). Orbax writes each step into a
temporary directory and renames it when complete, so a run killed mid-save leaves the previous step as the
latest loadable one.
"""

import contextlib
import errno
import hashlib
import json
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxunlearn.engine.state import TrainState
from jaxunlearn.errors import UserError

CHECKPOINT_DIR = "checkpoints"
_ITEMS = ("params", "batch_stats", "opt_state", "meta")


def open_manager(run_dir: Path, *, keep: int = 2) -> ocp.CheckpointManager:
    """A manager that keeps the `keep` latest steps of `run_dir/checkpoints`."""
    return ocp.CheckpointManager(
        (Path(run_dir) / CHECKPOINT_DIR).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=_ITEMS,
    )


def tree_hash(tree: Any) -> str:
    """SHA-256 of a pytree of arrays: every leaf's path, dtype, shape and bytes (host copies, in leaf order).
    What identifies a model's parameters in the checkpoint metadata (`params_hash`)."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if isinstance(leaf, jax.Array) and leaf.is_fully_replicated:
            leaf = leaf.addressable_data(0)  # this process's copy (in a multi-process run it has no other)
        value = np.ascontiguousarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{value.dtype}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def save(manager: ocp.CheckpointManager, epoch: int, state: TrainState, meta: dict[str, Any]) -> None:
    """Save the whole state under step `epoch` and wait until it is on disk; the metadata gains the hash of
    the parameters (`tree_hash`), which identifies the model this checkpoint holds."""
    items = dict(
        params=ocp.args.StandardSave(state.params),
        opt_state=ocp.args.StandardSave({"opt_state": state.opt_state, "extra": state.extra, "step": state.step,
                                          "key": state.key}),
        meta=ocp.args.JsonSave({**meta, "params_hash": tree_hash(state.params)}),
    )
    if _has_leaves(state.batch_stats):  # a model without BatchNorm (ViT) has none, and Orbax saves no empty item
        items["batch_stats"] = ocp.args.StandardSave(state.batch_stats)
    with _quiet_background_failures():
        manager.save(epoch, args=ocp.args.Composite(**items))
        manager.wait_until_finished()


def _has_leaves(tree: Any) -> bool:
    return bool(jax.tree.leaves(tree))


def _abstract(tree: Any) -> Any:
    """Shapes, dtypes and placements of a tree of arrays or ShapeDtypeStructs (unplaced: the first device)."""
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None) or default), tree
    )


@contextlib.contextmanager
def _quiet_background_failures() -> Iterator[None]:
    """Keep what Orbax's background work prints when a read or a write fails off the user's screen.

    Orbax reads and writes a checkpoint's arrays concurrently, on an asyncio loop and in threads. When one fails
    (a damaged checkpoint, a full disk) it closes the loop and the work still in flight completes into it:
    Python reports each as an unraisable RuntimeError("Event loop is closed"), its threads end with their
    tracebacks, and Orbax logs each failure, hundreds of lines, some after the caller's own one-line message.
    While the block runs these are dropped (the caller reports the failure itself); after a failure for the
    rest of the process, as the stragglers may land any time; after a success the previous hooks are back.
    """
    unraisable, thread_hook = sys.unraisablehook, threading.excepthook
    absl = logging.getLogger("absl")
    level = absl.level

    def quiet_unraisable(report: Any) -> None:
        if not (isinstance(report.exc_value, RuntimeError) and str(report.exc_value) == "Event loop is closed"):
            unraisable(report)

    sys.unraisablehook = quiet_unraisable
    threading.excepthook = lambda report: None
    absl.setLevel(logging.CRITICAL)
    yield
    sys.unraisablehook, threading.excepthook = unraisable, thread_hook
    absl.setLevel(level)


def no_space(error: BaseException | None) -> bool:
    """Whether `error`, or an error it came from, is a full disk (errno ENOSPC, as Python or TensorStore
    reports it)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error) or "os_error_code='28'" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def restore_state(manager: ocp.CheckpointManager, epoch: int, like: TrainState) -> tuple[TrainState, dict]:
    """Restore the full state saved at `epoch` into the structure and shardings of `like`."""
    items = dict(
        params=ocp.args.StandardRestore(_abstract(like.params)),
        opt_state=ocp.args.StandardRestore(
            _abstract({"opt_state": like.opt_state, "extra": like.extra, "step": like.step, "key": like.key})
        ),
        meta=ocp.args.JsonRestore(),
    )
    if _has_leaves(like.batch_stats):
        items["batch_stats"] = ocp.args.StandardRestore(_abstract(like.batch_stats))
    with _quiet_background_failures():
        restored = manager.restore(epoch, args=ocp.args.Composite(**items))
    optimizer = restored["opt_state"]
    state = TrainState(
        params=restored["params"], batch_stats=restored.get("batch_stats", like.batch_stats),
        opt_state=optimizer["opt_state"], extra=optimizer["extra"], step=optimizer["step"],
        key=optimizer["key"],
    )
    return state, dict(_checked_meta(restored["meta"], f"{manager.directory} step {epoch}"))


def latest_epoch(run_dir: Path) -> int | None:
    """The latest complete checkpoint step of a run directory, None when it has none."""
    directory = Path(run_dir) / CHECKPOINT_DIR
    if not directory.is_dir():
        return None
    return ocp.CheckpointManager(directory.absolute(), item_names=_ITEMS).latest_step()


def read_meta(run_dir: Path) -> dict[str, Any]:
    """The metadata of the latest checkpoint of `run_dir`; UserError when there is none or it is unreadable."""
    epoch = latest_epoch(run_dir)
    if epoch is None:
        raise UserError(f"no checkpoint in {run_dir} (expected {Path(run_dir) / CHECKPOINT_DIR}/<epoch>/)")
    path = Path(run_dir) / CHECKPOINT_DIR / str(epoch) / "meta" / "metadata"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"corrupt checkpoint metadata {path}: {error}") from None
    return _checked_meta(meta, path)


RUN_META = ("epoch", "steps", "finished", "evaluation", "seconds")
"""What the metadata of every checkpoint of a run holds (`jaxunlearn.engine.loop.Trainer` writes it)."""


def check_run_meta(meta: dict[str, Any], where: Any) -> dict[str, Any]:
    """`meta` if it holds the fields of `RUN_META` (epoch and steps as integers); UserError otherwise."""
    if not (isinstance(meta.get("epoch"), int) and isinstance(meta.get("steps"), int)
            and all(name in meta for name in RUN_META)):
        raise UserError(f"corrupt checkpoint metadata in {where}: it lacks the epoch, steps, finished, "
                        f"evaluation and seconds a run writes")
    return meta


def _checked_meta(meta: Any, where: Any) -> dict[str, Any]:
    """`meta` if it is a mapping, as every saved metadata is; UserError otherwise."""
    if not isinstance(meta, dict):
        raise UserError(f"corrupt checkpoint metadata {where}: a {type(meta).__name__}, not a mapping")
    return meta


def restore_model(run_dir: Path, params: Any, batch_stats: Any) -> tuple[Any, Any]:
    """Restore the latest params and batch_stats of `run_dir` into the structure of the given trees
    (arrays or `jax.ShapeDtypeStruct`s).

    The optimizer state is not read: unlearning starts a fresh one. A checkpoint whose arrays do not fit
    the target (another model or width), or that cannot be read, raises UserError.
    """
    epoch = latest_epoch(run_dir)
    if epoch is None:
        raise UserError(f"no checkpoint in {run_dir}")
    handlers = {name: ocp.StandardCheckpointHandler() for name in ("params", "batch_stats", "opt_state")}
    manager = ocp.CheckpointManager(
        (Path(run_dir) / CHECKPOINT_DIR).absolute(),
        item_handlers={**handlers, "meta": ocp.JsonCheckpointHandler()},
    )
    try:
        with _quiet_background_failures():
            stored = manager.item_metadata(epoch)
            targets = {"params": params, **({"batch_stats": batch_stats} if _has_leaves(batch_stats) else {})}
            for name, target in targets.items():
                _check_same_shapes(f"{run_dir} (epoch {epoch})", name, _shapes(stored.get(name) or {}),
                                   _shapes(target))
            restored = manager.restore(epoch, args=ocp.args.Composite(
                **{name: ocp.args.StandardRestore(_abstract(target)) for name, target in targets.items()}))
    except UserError:
        raise
    except Exception as error:  # Orbax raises many types for unreadable trees
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        first_line = first_line.split(" [tensorstore_spec")[0][:300]
        raise UserError(f"cannot restore the model from {run_dir} (epoch {epoch}): {first_line}") from None
    finally:
        manager.close()
    return restored["params"], restored.get("batch_stats", batch_stats)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """Leaf path ("encoder/stem_conv/kernel/value") → shape, for arrays and array metadata alike."""
    def name(key):
        return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))
    return {"/".join(name(k) for k in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _check_same_shapes(where: str, item: str, stored: dict, expected: dict) -> None:
    """UserError naming the first difference between a checkpoint's arrays and the model's."""
    for path in sorted(expected.keys() | stored.keys()):
        if path not in stored:
            raise UserError(f"checkpoint {where} does not match the model: it has no {item} {path}")
        if path not in expected:
            raise UserError(f"checkpoint {where} does not match the model: unexpected {item} {path}")
        if stored[path] != expected[path]:
            raise UserError(f"checkpoint {where} does not match the model: {item} {path} has shape "
                            f"{stored[path]}, the model needs {expected[path]}")
