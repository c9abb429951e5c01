"""Datasets held in host memory and forget/retain splits of their training sets."""

from jaxunlearn.data.sources import BUILTIN_DATASETS, Dataset, load_dataset
from jaxunlearn.data.splits import (
    PROTOCOLS,
    ForgetSpec,
    Split,
    load_split,
    make_split,
    parse_forget,
    save_split,
)

__all__ = [
    "BUILTIN_DATASETS",
    "PROTOCOLS",
    "Dataset",
    "ForgetSpec",
    "Split",
    "load_dataset",
    "load_split",
    "make_split",
    "parse_forget",
    "save_split",
]
