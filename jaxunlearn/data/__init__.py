"""Datasets (any random-access source of uint8 images, checked where they enter), where they come from, their
placement on the devices, and forget/retain splits of their training sets."""

from jaxunlearn.data.dataset import Dataset, ImageSource, NpyFile, stratified_subset
from jaxunlearn.data.sources import BUILTIN_DATASETS, DATASETS, load_dataset, register_dataset
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
    "DATASETS",
    "PAIRINGS",
    "Dataset",
    "ForgetSpec",
    "ImageSource",
    "NpyFile",
    "Split",
    "load_dataset",
    "load_split",
    "make_split",
    "parse_forget",
    "register_dataset",
    "save_split",
    "stratified_subset",
]
