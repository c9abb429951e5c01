"""The paper's protocol: resnet18 on svhn_cropped, forget class:5, official hyperparameters, every method, seeds 0-2.

Needs svhn_cropped prepared in array_record format (see experiments/README.md) and an accelerator:

    jaxunlearn experiment experiments/protocols/svhn_cropped_class5_resnet18.py --data-dir /data/tfds
"""

from jaxunlearn.protocols import paper_protocol

PROTOCOL = paper_protocol("svhn_cropped", "resnet18", "class:5")
