"""The paper's protocol: resnet34 on cifar10, forget random:500, official hyperparameters, every method, seeds 0-2.

Needs cifar10 prepared in array_record format (see experiments/README.md) and an accelerator:

    jaxunlearn experiment experiments/protocols/cifar10_random500_resnet34.py --data-dir /data/tfds
"""

from jaxunlearn.protocols import paper_protocol

PROTOCOL = paper_protocol("cifar10", "resnet34", "random:500")
