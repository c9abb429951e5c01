"""Digits, forget class 5: the smallest protocol (1 seed, 2 methods), run by the test suite.

    jaxunlearn experiment experiments/protocols/digits_smoke.py --out /tmp/digits-smoke

About a minute on 2 CPU cores. It checks that the pipeline works, not how well the methods do.
"""

from jaxunlearn.config import SupervisedHparams, TrainConfig
from jaxunlearn.experiment import ExperimentProtocol

PROTOCOL = ExperimentProtocol(
    name="digits_smoke",
    description="Digits, forget class 5, narrow ResNet-18 trained for 6 epochs; contrastive unlearning and "
                "gradient ascent against a 3-epoch retrained reference.",
    train=TrainConfig(dataset="digits", model="resnet18", width=0.125,
                      recipe=SupervisedHparams(epochs=6, batch_size=64)),
    forget="class:5",
    methods=("contrastive", "gradient_ascent"),
    seeds=(0,),
    hparams={"contrastive": {"epochs": "3"}, "gradient_ascent": {"epochs": "2", "batch_size": "32",
                                                                  "learning_rate": "0.01"}},
    reference_hparams={"epochs": "3"},
    relearn_steps=20,
)
