"""The CU and train steps in jaxunlearn and in PyTorch eager, on the same CPU, in one run, with the ratio.

jaxunlearn's figures come from `jaxunlearn bench` (run as a subprocess); PyTorch's from the same steps written
here in PyTorch: the same SupConResNet (CIFAR ResNet-18 times `--width`, MLP head, ReLU(l2-normalise),
classifier), the same B forget (class 0) + B retain images in one joint forward through BatchNorm in train
mode, the same loss (official CU `Loss_v1` arithmetic, class mode: λ_UL·L_CT + CE(retain), τ 0.7, λ_UL 3)
and SGD with momentum 0.9 at lr 1e-3; the train step is 2B images through cross-entropy with SGD (momentum
0.9, weight decay 5e-4). PyTorch is not a dependency of jaxunlearn: give `--torch-python`, an interpreter that
has torch (it may be another Python version), or run this file with one.

    python benchmarks/pytorch_side_by_side.py --torch-python /path/to/venv-with-torch/bin/python \\
        --width 1 --batch 64 --image-size 32 --channels 3 --devices 1

Both sides time one warm-up call and then `--repeats` calls of `--steps` steps each and take the median. PyTorch
runs NCHW (its default layout, what the official code uses) with torch's default thread count.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def torch_steps(width: float, batch: int, image_size: int, channels: int, classes: int, steps: int,
                repeats: int, seed: int) -> dict:
    """ms per step and images/s of the CU and train steps in PyTorch eager."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(seed)

    class BasicBlock(nn.Module):
        def __init__(self, c_in: int, planes: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.shortcut = nn.Sequential()
            if stride != 1 or c_in != planes:
                self.shortcut = nn.Sequential(nn.Conv2d(c_in, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)))
            return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))

    class SupConResNet(nn.Module):
        def __init__(self):
            super().__init__()
            planes = [int(round(p * width)) for p in (64, 128, 256, 512)]
            self.stem = nn.Sequential(nn.Conv2d(channels, planes[0], 3, 1, 1, bias=False), nn.BatchNorm2d(planes[0]),
                                      nn.ReLU())
            blocks, c_in = [], planes[0]
            for p, stride in zip(planes, (1, 2, 2, 2)):
                blocks += [BasicBlock(c_in, p, stride), BasicBlock(p, p, 1)]
                c_in = p
            self.blocks = nn.Sequential(*blocks)
            self.head = nn.Sequential(nn.Linear(c_in, c_in), nn.ReLU(), nn.Linear(c_in, 128))
            self.classifier = nn.Linear(128, classes)

        def forward(self, x):
            h = self.blocks(self.stem(x)).mean(dim=(2, 3))
            feat = F.relu(F.normalize(self.head(h), dim=1))
            return self.classifier(feat), feat

    def contrastive_loss(u_feat, r_feat, u_labels, r_labels, temperature=0.7):
        logits = u_feat @ r_feat.T / temperature
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()
        exp_logits = torch.exp(logits) + 1e-20
        same = (u_labels[:, None] == r_labels[None, :]).float()
        num_same = same.sum(1)
        same_mass = (exp_logits * same).sum(1) + (num_same == 0).float()
        log_prob = logits * (1 - same) - torch.log(same_mass)[:, None]
        return (-log_prob.sum(1) / (1 - same).sum(1)).mean()

    generator = torch.Generator().manual_seed(seed)
    images = lambda n: (torch.randint(0, 256, (n, channels, image_size, image_size), generator=generator).float()
                        / 255 - 0.5) / 0.25
    forget_x, retain_x = images(batch), images(batch)
    forget_y = torch.zeros(batch, dtype=torch.long)
    retain_y = 1 + torch.arange(batch) % (classes - 1)

    def cu_step(model, optimizer):
        logits, feat = model(torch.cat([forget_x, retain_x]))
        loss = 3.0 * contrastive_loss(feat[:batch], feat[batch:], forget_y, retain_y) \
            + F.cross_entropy(logits[batch:], retain_y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    def train_step(model, optimizer):
        logits, _ = model(torch.cat([forget_x, retain_x]))
        loss = F.cross_entropy(logits, torch.cat([forget_y, retain_y]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    figures = {}
    for kind, step, weight_decay in (("cu", cu_step, 0.0), ("train", train_step, 5e-4)):
        model = SupConResNet().train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=weight_decay)
        seconds = []
        for call in range(1 + repeats):
            start = time.perf_counter()
            for _ in range(steps):
                loss = step(model, optimizer)
            float(loss)
            if call:
                seconds.append(time.perf_counter() - start)
        per_step = statistics.median(seconds) / steps
        figures[kind] = {"ms_per_step": 1e3 * per_step, "images_per_second": 2 * batch / per_step,
                         "ms_per_step_per_call": [1e3 * s / steps for s in seconds]}
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "steps": figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", help="a Python that has torch (default: this one)")
    parser.add_argument("--jaxunlearn", default=shutil.which("jaxunlearn") or "jaxunlearn",
                        help="the jaxunlearn command (default: the one on PATH)")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=64, help="B: B forget + B retain images per CU step")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--devices", type=int, default=1, help="jaxunlearn's CPU devices (JAX_NUM_CPU_DEVICES)")
    parser.add_argument("--conv", help="jaxunlearn's convolution (bench --conv); default: bench's own default")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write both sides' figures and the ratios here")
    parser.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = dict(width=args.width, batch=args.batch, image_size=args.image_size, channels=args.channels,
                 classes=args.classes, steps=args.steps, repeats=args.repeats, seed=args.seed)
    if args.torch_only:
        print(json.dumps(torch_steps(**shape)))
        return

    torch_python = args.torch_python or sys.executable
    torch_run = subprocess.run([torch_python, __file__, "--torch-only", *sys.argv[1:]], capture_output=True,
                               text=True)
    if torch_run.returncode:
        sys.exit(f"the PyTorch side failed (is torch installed for {torch_python}?):\n{torch_run.stderr[-2000:]}")
    torch_figures = json.loads(torch_run.stdout.splitlines()[-1])

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "bench.json")
        command = [args.jaxunlearn, "bench", "--model", "resnet18", "--width", str(args.width),
                   "--batch", str(args.batch), "--image-size", str(args.image_size), "--channels", str(args.channels),
                   "--classes", str(args.classes), "--devices", str(args.devices), "--steps", str(args.steps),
                   "--repeats", str(args.repeats), "--seed", str(args.seed), "--json", path]
        if args.conv:
            command += ["--conv", args.conv]
        environment = os.environ | {"JAX_NUM_CPU_DEVICES": str(args.devices)}
        jax_run = subprocess.run(command, env=environment, capture_output=True, text=True)
        if jax_run.returncode:
            sys.exit(f"jaxunlearn bench failed:\n{jax_run.stderr[-2000:]}")
        with open(path) as file:
            jax_figures = json.load(file)

    print(f"ResNet-18 width {args.width:g}, {args.image_size}×{args.image_size}×{args.channels}, CU step "
          f"{args.batch} forget + {args.batch} retain, train step {2 * args.batch} images; {os.cpu_count()} CPUs")
    print(f"jaxunlearn: jax {jax_figures['environment']['jax']}, {args.devices} CPU device(s), conv "
          f"{'/'.join(jax_figures['environment']['convs'])}; PyTorch {torch_figures['torch']} eager, "
          f"{torch_figures['threads']} threads")
    print(f"{'step':6s} {'jaxunlearn img/s':>17s} {'PyTorch img/s':>14s} {'ratio':>6s}")
    ratios = {}
    for kind in ("cu", "train"):
        ours = jax_figures["steps"][kind]["images_per_second"]
        theirs = torch_figures["steps"][kind]["images_per_second"]
        ratios[kind] = ours / theirs
        print(f"{kind:6s} {ours:17.1f} {theirs:14.1f} {ratios[kind]:6.2f}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"jaxunlearn": jax_figures, "pytorch": torch_figures, "ratio": ratios}, file, indent=1)


if __name__ == "__main__":
    main()
