"""Fashion-MNIST (real data, the Debian package), forget random:500, CPU scale: every method, seeds 0-2.

A narrow ResNet-18 (width 1/8: 16 channels in the first stage) on a fixed stratified 4,000-image subset of
the 60,000 training images, evaluated on a fixed 2,000-image subset of the test set, trained with the
official recipe (SGD lr 0.1, momentum 0.9, weight decay 1e-4, cosine) for 12 epochs at batch 128. Every
method at its reference defaults. As run on this 2-core machine, on one CPU device (two are no faster:
BENCHMARKS.md); results in experiments/results/fashion_mnist_random500/:

    jaxunlearn experiment experiments/protocols/fashion_mnist_random500.py
"""

from jaxunlearn.config import SupervisedHparams, TrainConfig
from jaxunlearn.experiment import PAPER_METHODS, ExperimentProtocol

PROTOCOL = ExperimentProtocol(
    name="fashion_mnist_random500",
    description="Fashion-MNIST, forget random:500: a narrow ResNet-18 on a 4,000-image stratified subset, "
                "every method at its reference defaults against the retrained model.",
    train=TrainConfig(dataset="fashion_mnist", model="resnet18", width=0.125, train_size=4000, test_size=2000,
                      recipe=SupervisedHparams(epochs=12, batch_size=128)),
    forget="random:500",
    methods=tuple(m for m in PAPER_METHODS if m != "unsir"),
)
