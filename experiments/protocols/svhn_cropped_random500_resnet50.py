"""The paper's protocol: resnet50 on svhn_cropped, forget random:500, official hyperparameters, every method, seeds 0-2.

Needs svhn_cropped prepared in array_record format (see experiments/README.md) and an accelerator:

    jaxunlearn experiment experiments/protocols/svhn_cropped_random500_resnet50.py --data-dir /data/tfds
"""

from jaxunlearn.protocols import paper_protocol

PROTOCOL = paper_protocol("svhn_cropped", "resnet50", "random:500")
