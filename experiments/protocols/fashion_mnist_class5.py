"""Fashion-MNIST (real data, the Debian package), forget class:5, CPU scale: every method, seeds 0-2.

A narrow ResNet-18 (width 1/8: 8 channels in the first stage) on a fixed stratified 4,000-image subset of
the 60,000 training images, evaluated on a fixed 2,000-image subset of the test set, trained with the
official recipe (SGD lr 0.1, momentum 0.9, weight decay 1e-4, cosine) for 12 epochs at batch 128. Every
method at its reference defaults. As run on this 2-core machine, on one CPU device (two are no faster:
BENCHMARKS.md); results in experiments/results/fashion_mnist_class5/:

    jaxunlearn experiment experiments/protocols/fashion_mnist_class5.py
"""

from jaxunlearn.protocols import fashion_mnist_protocol

PROTOCOL = fashion_mnist_protocol("class:5")
