"""What makes two run configurations the same run, and the hash a checkpoint records of one."""

import dataclasses
import hashlib
import json
import os
from typing import Any

from jaxunlearn.config import TrainConfig, UnlearnConfig, to_json

def config_hash(config: dict[str, Any]) -> str:
    """SHA-256 of a run configuration's canonical JSON: what each checkpoint's metadata records."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def is_run_config(config: Any) -> bool:
    """Whether `config` (a parsed config.json) is a run's configuration."""
    return isinstance(config, dict) and config.get("kind") in ("train", "unlearn") \
        and isinstance(config.get("config"), dict)


def same_run(stored: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether the configuration recorded in a run directory and `config` make the same run
    (`canonical_config`). A run recorded before runs recorded their original's identity or their dataset's
    fingerprint is compared without them."""
    config = {key: value for key, value in config.items()
              if key in stored or key not in ("source_identity", "dataset_fingerprint")}
    return canonical_config(stored) == canonical_config(config)


def canonical_config(config: dict[str, Any]) -> dict[str, Any]:
    """What makes two configurations the same run: the resolved values, not how they were spelled.

    Drops the raw `--hp` overrides (the resolved hyperparameters are recorded beside them) and every
    `data_dir` (where the data is, not what it is), and resolves the source path (`./a/../a` is `a`).
    """
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: strip(item) for key, item in value.items() if key != "data_dir"}
        return value
    config = dict(config)
    for key, fields_of in (("config", TrainConfig if config.get("kind") == "train" else UnlearnConfig),
                           ("train_config", TrainConfig)):
        if isinstance(config.get(key), dict):
            config[key] = with_defaults(config[key], fields_of)
    result = strip(config)
    if isinstance(result.get("config"), dict) and "hparams" in result:
        result["config"] = {key: item for key, item in result["config"].items() if key != "hparams"}
    if isinstance(result.get("source"), str):
        result["source"] = os.path.realpath(result["source"])
    return result


def with_defaults(fields: dict[str, Any], config_class: type) -> dict[str, Any]:
    """`fields` of a `config_class` with the defaults of the fields it lacks: a run recorded before a field
    was added is the same configuration as one that sets it to its default."""
    defaults = {field.name: (field.default if field.default_factory is dataclasses.MISSING
                             else field.default_factory())
                for field in dataclasses.fields(config_class)
                if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING}
    nested = {name: with_defaults(fields[name], type(default)) for name, default in defaults.items()
              if dataclasses.is_dataclass(default) and isinstance(fields.get(name), dict)}
    return {**{name: to_json(default) for name, default in defaults.items()}, **fields, **nested}
