"""Datasets held in host memory and forget/retain splits of their training sets."""

from jaxunlearn.data.sources import BUILTIN_DATASETS, Dataset, load_dataset
from jaxunlearn.data.splits import (
    PAIRINGS,
    ForgetSpec,
    Split,
    load_split,
    make_split,
    parse_forget,
    save_split,
)

__all__ = [
    "BUILTIN_DATASETS",
    "PAIRINGS",
    "Dataset",
    "ForgetSpec",
    "Split",
    "load_dataset",
    "load_split",
    "make_split",
    "parse_forget",
    "save_split",
]
