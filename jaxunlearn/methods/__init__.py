"""Unlearning methods, by name."""

from jaxunlearn.errors import UserError
from jaxunlearn.methods.base import Context, Method
from jaxunlearn.methods.contrastive import Contrastive, ContrastiveHparams
from jaxunlearn.methods.retrain import Retrain
from jaxunlearn.methods.bad_teacher import BadTeacher
from jaxunlearn.methods.boundary import BoundaryExpand, BoundaryShrink
from jaxunlearn.methods.scrub import Scrub
from jaxunlearn.methods.unsir import Unsir
from jaxunlearn.methods.finetune import Finetune
from jaxunlearn.methods.gradient_ascent import GradientAscent
from jaxunlearn.methods.l1_sparse import L1Sparse
from jaxunlearn.methods.neggrad_plus import NegGradPlus
from jaxunlearn.methods.random_label import RandomLabel
from jaxunlearn.methods.salun import Salun

METHODS: dict[str, Method] = {method.name: method for method in (
    Contrastive(),
    Retrain(),
    Finetune(),
    GradientAscent(),
    NegGradPlus(),
    RandomLabel(),
    L1Sparse(),
    Salun(),
    # group A methods
    BoundaryShrink(),
    BoundaryExpand(),
    Scrub(),
    Unsir(),
    BadTeacher(),
    # group B methods
)}


def get_method(name: str) -> Method:
    """The registered method `name`; UserError listing the known ones otherwise."""
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "Context", "Contrastive", "ContrastiveHparams", "Method", "Retrain", "get_method"]
