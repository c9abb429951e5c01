"""Unlearning methods, by name.

A method is one module here holding only what is its own (`jaxunlearn.methods.base.Method`): its
hyperparameters, optimizer, batch plan, loss, termination rule and any constants or extra parameters. The
harness (`jaxunlearn.runs`) does everything else. docs/adding-a-method.md is the recipe, for a method in the
package (add its module to the imports below and its name to `base.BUILT_IN`) or in a file of your own;
`jaxunlearn.testing.check_method` checks it against the contract every method meets.
"""

# Importing a module registers its methods; this order is the order the reports list them.
from jaxunlearn.methods import (  # noqa: F401
    contrastive, retrain, finetune, gradient_ascent, neggrad_plus, random_label, l1_sparse, salun, boundary, scrub,
    unsir, bad_teacher,
)
from jaxunlearn.methods.base import (METHODS, Context, Method, SGDHparams, StartingModel, batch_blocks, get_method,
                                    register, sgd_optimizer, shuffled_blocks, torch_sgd)
from jaxunlearn.methods.contrastive import Contrastive, ContrastiveHparams, contrastive_objective
from jaxunlearn.methods.retrain import Retrain

__all__ = [
    "METHODS", "Context", "Contrastive", "ContrastiveHparams", "Method", "Retrain", "SGDHparams", "StartingModel",
    "batch_blocks", "contrastive_objective", "get_method", "register", "sgd_optimizer", "shuffled_blocks",
    "torch_sgd",
]
