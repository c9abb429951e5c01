"""The whole job both ways: `jaxunlearn unlearn --pairing official` against the official CU code, side by side.

The same job, timed as a user runs it (one process each, from start to exit): contrastive unlearning of class 5
from the same original weights, on the same images, with the official hyperparameters (batch 64, 4 retain
batches per forget batch, λ_UL 3, τ 0.7, SGD lr 1e-3 momentum 0.9) and the official stop rule (forget-class
test accuracy at most 1/classes after an epoch). jaxunlearn runs warm (its compilation cache filled by an
untimed run) and cold (an empty cache); the official code runs as its `unlearn.py` does, on CPU.

The official code (github.com/Hongkyu-Lee/Contrastive-Unlearning) is not part of jaxunlearn and torch is not
a dependency: give a checkout of it (`--official`) and an interpreter that has torch and torchvision
(`--torch-python`, any Python version). Its model is fixed at full width and 3 input channels, so this script
hands it the original's narrow ResNet-18 (built from the official `BasicBlock` and `ResNet` code, only the
widths and input channels changed) with the original's weights ported (checked: the two models' logits on the
test images agree), and its data through the official dataset registry; the training loop, loss, loaders,
evaluation and stop rule are the official `unlearn.run` itself. `wandb`, imported but unused there, is stubbed.

    jaxunlearn train --dataset fashion_mnist --model resnet18 --width 0.125 --train-size 4000 \\
        --test-size 2000 --epochs 12 --batch-size 128 --workdir runs/original
    python benchmarks/official_end_to_end.py --original runs/original \\
        --official ~/Contrastive-Unlearning --torch-python ~/venv-torch/bin/python --out e2e.json

Run it on a quiet machine: the two sides alternate, `--repeats` times each, and the medians are compared.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FORGET_CLASS = 5
BATCH = 64


# ---- the official side (runs under --torch-python) -------------------------------------------------------

def official_model(official: str, widths: list[int], in_channels: int, num_classes: int):
    """The official SupConResNet with its ResNet-18 narrowed to `widths` and `in_channels` inputs."""
    sys.path.insert(0, official)
    import types
    sys.modules.setdefault("wandb", types.ModuleType("wandb"))  # imported by the official trainer, never used
    import torch.nn as nn
    from core.model import resnet

    class NarrowResNet(resnet.ResNet):
        """The official ResNet's __init__ with its widths (64, 128, 256, 512) and input channels as given."""

        def __init__(self):
            nn.Module.__init__(self)
            self.in_planes = widths[0]
            self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            self.layer1 = self._make_layer(resnet.BasicBlock, widths[0], 2, stride=1)
            self.layer2 = self._make_layer(resnet.BasicBlock, widths[1], 2, stride=2)
            self.layer3 = self._make_layer(resnet.BasicBlock, widths[2], 2, stride=2)
            self.layer4 = self._make_layer(resnet.BasicBlock, widths[3], 2, stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    resnet.model_dict["resnet18"] = [NarrowResNet, widths[3]]
    return resnet.SupConResNet(name="resnet18", num_classes=num_classes)


def official_prepare(export: str, official: str, checkpoint: str) -> None:
    """Port the exported weights into the official model, save them as the official checkpoint format, and
    print the largest logit difference from jaxunlearn's on the exported test images (JSON)."""
    import numpy as np
    import torch

    data = np.load(export)
    model = official_model(official, data["widths"].tolist(), int(data["train_x"].shape[-1]),
                           int(data["num_classes"]))
    state = {name[2:]: torch.from_numpy(data[name]) for name in data.files if name.startswith("w/")}
    for name, value in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            state[name] = value
    model.load_state_dict(state)
    model.eval()
    images = (torch.from_numpy(data["test_x"][:256]).permute(0, 3, 1, 2).float() / 255 -
              torch.tensor(data["mean"]).view(1, -1, 1, 1)) / torch.tensor(data["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        logits = model(images)[0].numpy()
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    print(json.dumps({"max_logit_difference": float(np.abs(logits - data["logits"]).max())}))


def official_run(export: str, official: str, checkpoint: str) -> None:
    """The official `unlearn.run` on the exported data, from `checkpoint` (the cwd receives its logging/)."""
    import numpy as np
    import torch
    from torchvision import transforms

    data = np.load(export)
    official_model(official, data["widths"].tolist(), int(data["train_x"].shape[-1]), int(data["num_classes"]))
    from core.data import datasets

    class Exported(torch.utils.data.Dataset):
        """What the official loaders read of a torchvision dataset: data, targets, transform."""

        def __init__(self, x, y):
            self.data, self.targets = x, y.tolist()
            self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(
                tuple(data["mean"].tolist()), tuple(data["std"].tolist()))])

        def __len__(self):
            return len(self.targets)

    datasets.DATASETS["exported"] = lambda args: (Exported(data["train_x"], data["train_y"]),
                                                  Exported(data["test_x"], data["test_y"]))
    sys.argv = ["unlearn.py", "--method", "contrastive", "--unlearn_type", "single_class",
                "--unlearn_class", str(FORGET_CLASS), "--dataset", "exported", "--load_path", checkpoint,
                "--batch_size", str(BATCH), "--device", "cpu", "--num_classes", str(int(data["num_classes"]))]
    from core.args import Untrain_Parser
    import unlearn
    unlearn.run(Untrain_Parser().parse_args())


# ---- the jaxunlearn side and the comparison ----------------------------------------------------------------

def export(original: str, path: Path) -> None:
    """The original's training and test images (uint8 NHWC), labels, normalisation, weights in the official
    model's names and layouts ("w/<name>"), and jaxunlearn's logits on the first 256 test images."""
    import jax
    import numpy as np
    from jaxunlearn.run import Run

    run = Run(original)
    dataset = run.dataset
    _, params, batch_stats = run.model()
    weights = {}

    def put(name, value):
        weights[f"w/{name}"] = np.ascontiguousarray(np.asarray(jax.device_get(value), np.float32))

    def conv(name, module):
        put(f"{name}.weight", np.transpose(np.asarray(module["kernel"].get_value()), (3, 2, 0, 1)))

    def bn(name, module, stats):
        put(f"{name}.weight", module["scale"].get_value())
        put(f"{name}.bias", module["bias"].get_value())
        put(f"{name}.running_mean", stats["mean"].get_value())
        put(f"{name}.running_var", stats["var"].get_value())

    def linear(name, module):
        put(f"{name}.weight", np.asarray(module["kernel"].get_value()).T)
        put(f"{name}.bias", module["bias"].get_value())

    encoder, stats = params["encoder"], batch_stats["encoder"]
    conv("encoder.conv1", encoder["stem_conv"])
    bn("encoder.bn1", encoder["stem_bn"], stats["stem_bn"])
    for i in sorted(encoder["blocks"].keys()):  # two blocks per stage
        block, block_stats, prefix = encoder["blocks"][i], stats["blocks"][i], f"encoder.layer{i // 2 + 1}.{i % 2}"
        for part in ("1", "2"):
            conv(f"{prefix}.conv{part}", block[f"conv{part}"])
            bn(f"{prefix}.bn{part}", block[f"bn{part}"], block_stats[f"bn{part}"])
        if "shortcut" in block:
            conv(f"{prefix}.shortcut.0", block["shortcut"]["conv"])
            bn(f"{prefix}.shortcut.1", block["shortcut"]["bn"], block_stats["shortcut"]["bn"])
    linear("head.0", params["head_hidden"])
    linear("head.2", params["head_out"])
    linear("fc.1", params["classifier"])
    widths = [int(weights[f"w/encoder.layer{stage}.0.conv1.weight"].shape[0]) for stage in (1, 2, 3, 4)]
    train_x = np.asarray(dataset.train_images)
    test_x = np.asarray(dataset.test_images)
    logits, _ = run.predict(params, batch_stats, jax.device_put(test_x), np.arange(256))
    np.savez(path, train_x=train_x, train_y=dataset.train_labels, test_x=test_x, test_y=dataset.test_labels,
             mean=np.asarray(dataset.mean, np.float32), std=np.asarray(dataset.std, np.float32),
             num_classes=dataset.num_classes, widths=np.asarray(widths), logits=np.asarray(logits), **weights)


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Wall seconds of one process, start to exit; its output is kept in cwd/output.txt."""
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - started
    (cwd / "output.txt").write_text(result.stdout)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} … failed:\n{result.stdout[-3000:]}")
    return seconds


def jaxunlearn_once(original: str, scratch: Path, cache: Path) -> dict:
    """One `jaxunlearn unlearn` run: its wall time and what its metrics.json says."""
    scratch.mkdir(parents=True)
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache)}
    wall = timed([sys.executable, "-m", "jaxunlearn.cli", "unlearn", "--method", "contrastive",
                  "--forget", f"class:{FORGET_CLASS}", "--pairing", "official", "--from", original,
                  "--workdir", str(scratch / "run")], scratch, env)
    metrics = json.loads((scratch / "run" / "metrics.json").read_text())
    return {"wall": wall, "loop": metrics["seconds"], "compile": metrics["compile_seconds"],
            "steps": metrics["steps"], "epochs": metrics["epochs"],
            "retain_test_acc": metrics["test_acc"], "forget_test_acc": metrics["forget_test_acc"],
            "forget_train_acc": metrics["forget_train_acc"], "retain_train_acc": metrics["retain_train_acc"]}


def official_once(torch_python: str, official: str, export_path: Path, checkpoint: Path, scratch: Path) -> dict:
    """One official run: its wall time and its last epoch's logged accuracies."""
    scratch.mkdir(parents=True)
    wall = timed([torch_python, __file__, "--official-run", str(export_path), "--official", official,
                  "--checkpoint", str(checkpoint)], scratch, dict(os.environ))
    log = next((scratch / "logging").iterdir()).read_text()
    epochs = re.findall(r"Epoch: (\d+), (.*)", log)
    last = dict(re.findall(r"(\w+): ([0-9.]+)", epochs[-1][1]))
    return {"wall": wall, "epochs": len(epochs), "retain_test_acc": float(last["test_retain_acc"]),
            "forget_test_acc": float(last["test_unlearn_acc"]), "forget_train_acc": float(last["unlearn_acc"]),
            "retain_train_acc": float(last["train_acc"])}


def import_seconds() -> float:
    """Seconds to import jaxunlearn's command line in a fresh process, less the interpreter's own start."""
    def wall(code):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - started
    return statistics.median(wall("import jaxunlearn.cli") - wall("pass") for _ in range(3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--original", help="a jaxunlearn training run (see the docstring)")
    parser.add_argument("--official", required=True, help="a checkout of Hongkyu-Lee/Contrastive-Unlearning")
    parser.add_argument("--torch-python", help="an interpreter with torch and torchvision")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each side (default 3)")
    parser.add_argument("--out", help="write the figures here as JSON")
    parser.add_argument("--official-prepare", metavar="EXPORT", help=argparse.SUPPRESS)
    parser.add_argument("--official-run", metavar="EXPORT", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.official_prepare:
        return official_prepare(args.official_prepare, args.official, args.checkpoint)
    if args.official_run:
        return official_run(args.official_run, args.official, args.checkpoint)
    if not (args.original and args.torch_python):
        parser.error("--original and --torch-python are needed")
    if not (Path(args.official) / "unlearn.py").is_file():
        parser.error(f"{args.official} holds no unlearn.py: give a checkout of the official code")

    with tempfile.TemporaryDirectory(prefix="jaxunlearn-e2e-") as tmp:
        tmp = Path(tmp)
        export_path, checkpoint = tmp / "export.npz", tmp / "original.pt"
        export(args.original, export_path)
        port = subprocess.run([args.torch_python, __file__, "--official-prepare", str(export_path), "--official",
                               args.official, "--checkpoint", str(checkpoint)], check=True, capture_output=True,
                              text=True)
        port = json.loads(port.stdout.strip().splitlines()[-1])
        print(f"weights ported: largest logit difference {port['max_logit_difference']:.2e}", file=sys.stderr)

        cold = jaxunlearn_once(args.original, tmp / "cold", tmp / "cache-cold")
        jaxunlearn_once(args.original, tmp / "prime", tmp / "cache")  # fills the cache the warm runs read
        official_once(args.torch_python, args.official, export_path, checkpoint, tmp / "official-warmup")
        warm, official = [], []
        for r in range(args.repeats):
            warm.append(jaxunlearn_once(args.original, tmp / f"warm{r}", tmp / "cache"))
            official.append(official_once(args.torch_python, args.official, export_path, checkpoint,
                                          tmp / f"official{r}"))
            print(f"repeat {r + 1}: jaxunlearn {warm[-1]['wall']:.2f} s, official {official[-1]['wall']:.2f} s",
                  file=sys.stderr)
        imports = import_seconds()

    median = lambda runs, key: statistics.median(run[key] for run in runs)
    result = {
        "port_max_logit_difference": port["max_logit_difference"],
        "official": {"wall_median": median(official, "wall"), "runs": official},
        "jaxunlearn_warm": {"wall_median": median(warm, "wall"), "runs": warm},
        "jaxunlearn_cold": cold,
        "jaxunlearn_import_seconds": imports,
        "ratio_official_over_warm": median(official, "wall") / median(warm, "wall"),
        "ratio_official_over_cold": median(official, "wall") / cold["wall"],
    }
    w = result["jaxunlearn_warm"]["wall_median"]
    loop, compiled = median(warm, "loop"), median(warm, "compile")
    print(f"official {result['official']['wall_median']:.2f} s; jaxunlearn warm {w:.2f} s "
          f"(×{result['ratio_official_over_warm']:.2f} the official speed), cold {cold['wall']:.2f} s "
          f"(×{result['ratio_official_over_cold']:.2f})\n"
          f"jaxunlearn warm: imports {imports:.2f} s, the loop {loop:.2f} s (steps and each epoch's evaluation; "
          f"{compiled:.2f} s of it tracing, compiling or reading compiled programs), the rest {w - imports - loop:.2f} s "
          f"(interpreter start, data, model, checks, final evaluation, writing)\n"
          f"accuracies (jaxunlearn | official): "
          + ", ".join(f"{key} {warm[0][key]:.4f} | {official[0][key]:.4f}" for key in
                      ("forget_train_acc", "forget_test_acc", "retain_test_acc", "retain_train_acc"))
          + f"; epochs {warm[0]['epochs']} | {official[0]['epochs']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
