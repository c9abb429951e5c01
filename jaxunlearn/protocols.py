"""The experiment protocols this project reports (experiments/protocols/ names them): the CPU-scale
Fashion-MNIST setup at reference defaults and tuned, and the paper's CIFAR-10 / SVHN setup."""

from jaxunlearn.config import SupervisedHparams, TrainConfig
from jaxunlearn.data.splits import ForgetSpec, parse_forget
from jaxunlearn.experiment import ExperimentProtocol
from jaxunlearn.methods import METHODS, get_method
from jaxunlearn.tuning import Tuning

PAPER_METHODS: tuple[str, ...] = tuple(name for name, method in METHODS.items() if method.in_paper_comparison)
"""Every method the paper's comparison needs (`Method.in_paper_comparison`), in the order the reports list them."""


def methods_for(forget: ForgetSpec) -> tuple[str, ...]:
    """`PAPER_METHODS` that support the mode of `forget` (class-only methods are left out of sample forgetting)."""
    return tuple(m for m in PAPER_METHODS if forget.mode in get_method(m).modes)


def fashion_mnist_protocol(forget: str) -> ExperimentProtocol:
    """The CPU-scale setup: a width-1/8 ResNet-18 on a fixed stratified 4,000-image subset of Fashion-MNIST
    (evaluated on a fixed 2,000-image test subset), the official recipe for 12 epochs at batch 128, every
    method that supports `forget` at its reference defaults, seeds 0, 1, 2."""
    spec = parse_forget(forget)
    return ExperimentProtocol(
        name=f"fashion_mnist_{forget.replace(':', '')}",
        description=f"Fashion-MNIST, forget {forget}: a narrow ResNet-18 on a 4,000-image stratified subset, "
                    "every method at its reference defaults against the retrained model.",
        train=TrainConfig(dataset="fashion_mnist", model="resnet18", width=0.125, train_size=4000,
                          test_size=2000, recipe=SupervisedHparams(epochs=12, batch_size=128)),
        forget=spec,
        methods=methods_for(spec),
    )


FASHION_MNIST_TUNING: dict[str, Tuning] = {
    "contrastive": Tuning(("0.001", "0.0001"), "lambda_ul", ("3", "1")),
    "finetune": Tuning(("0.01", "0.04"), "epochs", ("10", "5")),
    "gradient_ascent": Tuning(("0.0001", "0.001"), "epochs", ("5", "2")),
    "neggrad_plus": Tuning(("0.01", "0.003"), "beta", ("0.95", "0.99")),
    "random_label": Tuning(("0.013", "0.004"), "epochs", ("10", "5")),
    "l1_sparse": Tuning(("0.01", "0.04"), "gamma", ("0.0001", "0.0005")),
    "salun": Tuning(("0.013", "0.004"), "mask_ratio", ("0.5", "0.8")),
    "boundary_shrink": Tuning(("0.00001", "0.0001"), "bound", ("0.1", "0.3")),
    "boundary_expand": Tuning(("0.00001", "0.0001"), "epochs", ("10", "5")),
    "scrub": Tuning(("0.0005", "0.002"), "alpha", ("0.001", "0.01")),
    "unsir": Tuning(("0.02", "0.005"), "epochs", ("2", "4")),
    "bad_teacher": Tuning(("0.0001", "0.001"), "temperature", ("1", "4")),
}
"""The same budget for every method of the tuned Fashion-MNIST protocols: 4 configurations, its reference
learning rate and one other × its reference value of one knob of its own and one other (the first of each is
the reference default, so one configuration is the default run itself)."""


def tuned_fashion_mnist_protocol(forget: str) -> ExperimentProtocol:
    """The stronger CPU-scale setup: `fashion_mnist_protocol` with a ResNet-18 twice as wide (width 1/4: 16
    channels in the first stage) and 1,000 more training images held out as the validation set, every method
    at its reference defaults and tuned with `FASHION_MNIST_TUNING` on seed 0."""
    spec = parse_forget(forget)
    methods = methods_for(spec)
    return ExperimentProtocol(
        name=f"fashion_mnist_{forget.replace(':', '')}_tuned",
        description=f"Fashion-MNIST, forget {forget}: a ResNet-18 of width 1/4 on a 4,000-image stratified "
                    "subset, every method at its reference defaults and tuned with an equal budget (4 "
                    "configurations chosen on seed 0 by their gap to the retrained model on forget-train, "
                    "retain-train and 1,000 held-out validation images).",
        train=TrainConfig(dataset="fashion_mnist", model="resnet18", width=0.25, train_size=4000,
                          test_size=2000, validation_size=1000, recipe=SupervisedHparams(epochs=12, batch_size=128)),
        forget=spec,
        methods=methods,
        tuning={method: FASHION_MNIST_TUNING[method] for method in methods},
    )


def paper_protocol(dataset: str, model: str, forget: str) -> ExperimentProtocol:
    """The paper's setup: full-width `model` trained on all of `dataset` with the official recipe (SGD lr 0.1,
    momentum 0.9, weight decay 1e-4, cosine, 100 epochs, batch 256), the official splits (`class:5`: the
    class minus its last image; `random:500`: the first 500 images), every method at its reference defaults,
    seeds 0, 1, 2. Class-only methods are left out of sample forgetting."""
    name = f"{dataset}_{forget.replace(':', '')}_{model}"
    spec = parse_forget(forget)
    return ExperimentProtocol(
        name=name,
        description=f"The paper's protocol: {model} on {dataset}, forget {forget}, official hyperparameters.",
        train=TrainConfig(dataset=dataset, model=model), forget=spec, methods=methods_for(spec),
        pairing="official",
    )
