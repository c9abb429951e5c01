"""jaxunlearn: machine unlearning of image classifiers in JAX/Flax, with Contrastive Unlearning.

The public API is the names below (docs/api.md shows them at work) and the `__all__` of the
subpackages `jaxunlearn.data`, `jaxunlearn.models`, `jaxunlearn.methods` and `jaxunlearn.evaluation`.
Every other module and every name starting with an underscore is internal and may change.
"""

__version__ = "0.2.0"

from jaxunlearn.config import Hparams, SupervisedHparams, TrainConfig, UnlearnConfig
from jaxunlearn.data import Dataset, ForgetSpec, Split, load_dataset, make_split, parse_forget, register_dataset
from jaxunlearn.engine.loop import EpochInfo, Hook
from jaxunlearn.engine.parallel import Execution
from jaxunlearn.engine.state import TrainState, create_state, model_key
from jaxunlearn.engine.step import DATA_AXIS, LossFn, StepContext, make_step
from jaxunlearn.errors import UserError
from jaxunlearn.evaluation import challenge_epsilons, forget_quality
from jaxunlearn.evaluation.evaluators import evaluate_model
from jaxunlearn.losses import contrastive_unlearning_loss, cross_entropy
from jaxunlearn.methods import METHODS, ContrastiveHparams, Method, contrastive_objective, get_method, register
from jaxunlearn.methods.supervised import supervised_loss
from jaxunlearn.models import EmbeddingClassifier, SupConResNet, SupConViT, create_model, register_model
from jaxunlearn.run import Run
from jaxunlearn import testing
from jaxunlearn.runs import evaluate, train, unlearn

__all__ = [
    "DATA_AXIS", "Hparams", "METHODS", "ContrastiveHparams", "Dataset", "EmbeddingClassifier", "EpochInfo", "Execution", "ForgetSpec",
    "Hook",
    "LossFn", "Method", "Run", "Split", "StepContext", "SupConResNet", "SupConViT", "SupervisedHparams",
    "TrainConfig", "TrainState", "UnlearnConfig", "UserError", "__version__", "challenge_epsilons",
    "contrastive_objective", "contrastive_unlearning_loss", "create_model", "create_state", "cross_entropy", "model_key",
    "evaluate", "evaluate_model", "forget_quality", "get_method", "load_dataset", "make_split", "make_step",
    "parse_forget", "register", "testing", "register_dataset", "register_model", "supervised_loss", "train", "unlearn",
]
