"""Unlearning methods, by name."""

from jaxunlearn.errors import UserError
from jaxunlearn.methods.base import Context, Method
from jaxunlearn.methods.contrastive import Contrastive, ContrastiveHparams
from jaxunlearn.methods.retrain import Retrain

METHODS: dict[str, Method] = {method.name: method for method in (Contrastive(), Retrain())}


def get_method(name: str) -> Method:
    """The registered method `name`; UserError listing the known ones otherwise."""
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "Context", "Contrastive", "ContrastiveHparams", "Method", "Retrain", "get_method"]
