"""Unlearning methods, by name.

A method is one module here holding only what is its own (`jaxunlearn.methods.base.Method`): its
hyperparameters, optimizer, batch plan, loss, termination rule and any constants or extra parameters. The
harness (`jaxunlearn.runs`) does everything else. docs/adding-a-method.md is the recipe: write the module,
decorate the class with `@register`, and add the module to the imports below; the method contract test
(tests/test_method_contract.py) then checks it with every other.
"""

# Importing a module registers its methods; this order is the order the reports list them.
from jaxunlearn.methods import (  # noqa: F401
    contrastive, retrain, finetune, gradient_ascent, neggrad_plus, random_label, l1_sparse, salun, boundary, scrub,
    unsir, bad_teacher,
)
from jaxunlearn.methods.base import METHODS, Context, Method, get_method, register
from jaxunlearn.methods.contrastive import Contrastive, ContrastiveHparams, contrastive_objective
from jaxunlearn.methods.retrain import Retrain

__all__ = [
    "METHODS", "Context", "Contrastive", "ContrastiveHparams", "Method", "Retrain", "contrastive_objective", "get_method",
    "register",
]
