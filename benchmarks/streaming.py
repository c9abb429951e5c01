"""The streamed input path against the device-resident one: throughput side by side, and memory on data far
larger than memory. BENCHMARKS.md "Streaming input" has the figures.

    .venv/bin/python benchmarks/streaming.py throughput [--epochs 3] [--json out.json]
        Whole-epoch images per second of the Fashion-MNIST protocol's training (ResNet-18 of width 1/8,
        the fixed 4,000-image subset, batch 128, one device), device-resident and streamed in turn, each
        epoch timed after a first one that compiles; prints the ratio.
        --synthetic DIR [--gigabytes G] [--model M --width W --batch B]: on a synthetic CIFAR-shaped dataset
        written under DIR instead (what benchmarks/accelerator.sh times where Fashion-MNIST is not installed).

    .venv/bin/python benchmarks/streaming.py memory --dir /tmp/stream-8g [--gigabytes 8] [--json out.json]
        Writes a synthetic on-disk dataset of GIGABYTES of uint8 32×32×3 images (train.npy, read with
        jaxunlearn.data.NpyFile, never loaded), then runs `jaxunlearn train` for 500 streamed steps (batch 64)
        and a CU `unlearn` of 100 steps from it, each in its own process, and reports their peak resident
        memory (ru_maxrss). Evaluation runs on a fixed sample (--eval-sample 2000).

The dataset of the memory mode is importable as streaming:big_dataset (the --dir is its data_dir).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

IMAGE = (32, 32, 3)
TEST_IMAGES = 2000
SEED = 0


def write_big_dataset(directory: Path, gigabytes: float) -> int:
    """train.npy (uint8 [N, 32, 32, 3], N·3,072 bytes ≥ `gigabytes` GB), train_labels.npy, test.npy and
    test_labels.npy under `directory`: ten classes, each a fixed random template plus noise. Returns N."""
    directory.mkdir(parents=True, exist_ok=True)
    count = int(np.ceil(gigabytes * 1e9 / np.prod(IMAGE)))
    rng = np.random.default_rng(SEED)
    templates = rng.integers(0, 200, (10, *IMAGE), dtype=np.uint8)
    labels = rng.integers(0, 10, count).astype(np.int32)
    path = directory / "train.npy"
    if not (path.exists() and np.load(path, mmap_mode="r").shape == (count, *IMAGE)):
        # Written chunk by chunk with plain writes, not through a memmap: the pages a memmap dirties would count
        # in this process's resident memory, which the children started after it inherit in their peak
        # (Linux carries a process's pre-exec high-water mark into ru_maxrss).
        with open(directory / "train.partial.npy", "wb") as out:
            np.lib.format.write_array_header_2_0(
                out, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                      "shape": (count, *IMAGE)})
            for start in range(0, count, 65536):
                stop = min(start + 65536, count)
                out.write((templates[labels[start:stop]] + rng.integers(0, 56, (stop - start, *IMAGE), np.uint8))
                          .tobytes())
        os.replace(directory / "train.partial.npy", path)
    np.save(directory / "train_labels.npy", labels)
    test_labels = rng.integers(0, 10, TEST_IMAGES).astype(np.int32)
    np.save(directory / "test.npy", templates[test_labels] + rng.integers(0, 56, (TEST_IMAGES, *IMAGE), np.uint8))
    np.save(directory / "test_labels.npy", test_labels)
    return count


def big_dataset(data_dir: str):
    """The synthetic dataset under `data_dir`, its training images read by index from disk."""
    import jaxunlearn as ju

    directory = Path(data_dir)
    return ju.Dataset.from_source(ju.data.NpyFile(directory / "train.npy"), np.load(directory / "test.npy"),
                                  train_labels=np.load(directory / "train_labels.npy"),
                                  test_labels=np.load(directory / "test_labels.npy"), num_classes=10,
                                  mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), name="synthetic_big")


def run_measured(args: list[str]) -> dict:
    """Run `jaxunlearn ARGS` in its own process (the working directory: this folder); its wall time and peak
    resident memory (the child's ru_maxrss, from wait4; it includes this process's resident memory when the
    child was started, whose peak `parent_peak_rss_gib` records: a bound on that error, not subtracted)."""
    started = time.perf_counter()
    with open(os.devnull, "w") as quiet, subprocess.Popen(
            [sys.executable, "-m", "jaxunlearn.cli", *args], cwd=Path(__file__).parent, stdout=quiet,
            stderr=subprocess.PIPE, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}) as child:
        stderr = child.stderr.read()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    if child.returncode != 0:
        sys.exit(f"jaxunlearn {' '.join(args)} failed:\n{stderr[-3000:]}")
    return {"seconds": seconds, "peak_rss_gib": usage.ru_maxrss * 1024 / 2**30, "parent_peak_rss_gib": parent,
            "log": [line for line in stderr.splitlines() if line.startswith("data:")]}


def memory(directory: Path, gigabytes: float) -> dict:
    count = write_big_dataset(directory, gigabytes)
    size = (directory / "train.npy").stat().st_size
    work = directory / "runs"
    dataset = ["--dataset", "streaming:big_dataset", "--data-dir", str(directory)]
    result = {"train_images": count, "train_npy_bytes": size}
    result["train"] = run_measured(["train", *dataset, "--model", "resnet18", "--width", "0.125", "--epochs", "1",
                                    "--batch-size", "64", "--train-size", str(500 * 64), "--eval-sample", "2000",
                                    "--data-placement", "stream", "--devices", "1", "--workdir", str(work / "train")])
    result["unlearn"] = run_measured(["unlearn", "--method", "contrastive", "--forget", "random:3200", "--epochs", "1",
                                      "--from", str(work / "train"), "--data-placement", "stream", "--devices", "1",
                                      "--workdir", str(work / "cu")])
    for name in ("train", "unlearn"):
        log = [json.loads(line) for line in (work / ("train" if name == "train" else "cu") / "metrics.jsonl")
               .read_text().splitlines()]
        result[name]["steps"] = len(log)
    return result


def throughput(epochs: int, synthetic: Path | None, gigabytes: float, model: str, width: float, batch: int) -> dict:
    """Images per second of whole training epochs, device-resident against streamed, alternating: on the
    Fashion-MNIST protocol's 4,000 images, or on all of a synthetic dataset of `gigabytes` under `synthetic`."""
    import jax

    from jaxunlearn.config import SupervisedHparams, TrainConfig
    from jaxunlearn.data.placement import place_data
    from jaxunlearn.engine.procedure import Procedure
    from jaxunlearn.engine.runners import OneModel
    from jaxunlearn.engine.parallel import Execution
    from jaxunlearn.engine.state import create_state
    from jaxunlearn.methods.supervised import supervised_loss, supervised_optimizer, supervised_plan
    from jaxunlearn.run import model_state, training_data

    recipe = SupervisedHparams(epochs=epochs + 1, batch_size=batch)
    if synthetic is None:
        config = TrainConfig(dataset="fashion_mnist", model=model, width=width, train_size=4000, test_size=2000,
                             recipe=recipe)
    else:
        write_big_dataset(synthetic, gigabytes)
        config = TrainConfig(dataset="streaming:big_dataset", data_dir=str(synthetic), model=model, width=width,
                             recipe=recipe)
    dataset = training_data(config)
    plan = lambda epoch: supervised_plan(np.arange(len(dataset.train_labels)), batch, np.random.default_rng([0, epoch]))
    images = sum(block["train"].size for block in plan(0))
    graphdef, params, batch_stats = model_state(config, dataset, initialise=True)
    tx, schedule = supervised_optimizer(config.recipe, images // batch)
    runners = {}
    for placement in ("device", "stream"):
        procedure = Procedure(loss_fn=supervised_loss, tx=tx, plan=plan, epochs=epochs + 1, evaluate=None,
                              should_stop=None, learning_rate=schedule)
        runner = OneModel(procedure, graphdef, place_data(dataset, placement), Execution(devices=1), placement)
        state = runner.place(create_state(params, batch_stats, tx))
        runner.compile(0)
        state, _ = runner.epoch(state, 0, 0)  # compiles
        runners[placement] = [runner, state]
    seconds = {placement: [] for placement in runners}
    for epoch in range(1, epochs + 1):
        for placement, entry in runners.items():
            started = time.perf_counter()
            entry[1], metrics = entry[0].epoch(entry[1], epoch, 0)
            jax.block_until_ready(entry[1])
            seconds[placement].append(time.perf_counter() - started)
    rates = {placement: images / float(np.median(times)) for placement, times in seconds.items()}
    return {"dataset": dataset.name, "model": model, "width": width, "batch": batch, "backend": jax.default_backend(),
            "device_kind": jax.devices()[0].device_kind, "images_per_epoch": images, "epochs_timed": epochs, "seconds": seconds, "images_per_second": rates,
            "stream_over_device": rates["stream"] / rates["device"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("throughput", "memory"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dir", default="/tmp/jaxunlearn-stream-8g")
    parser.add_argument("--gigabytes", type=float, default=8.0)
    parser.add_argument("--synthetic", type=Path, help="throughput: on a synthetic dataset written here")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.mode == "throughput":
        result = throughput(args.epochs, args.synthetic, args.gigabytes, args.model, args.width, args.batch)
    else:
        result = memory(Path(args.dir), args.gigabytes)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
