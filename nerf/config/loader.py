"""Reading configs: strict construction from YAML data, `--set` overrides, and atomic saving.

Every key is honoured or rejected: an unknown key or a wrong type is a ConfigError naming the file and
the dotted key; nerf/config/validation.py then checks values and cross-key consistency.
"""

from __future__ import annotations

import argparse
import collections.abc
import copy
import dataclasses
import re
import types
import typing
from typing import Any, Optional

import yaml

from ..files import atomic_write
from .schema import Config, ConfigError, ModelsConfig, VoxelGridConfig
from .validation import validate, validate_model


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: key '{key}' must not be null")
    if typing.get_origin(tp) is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: key '{key}' expects a list of {item_type.__name__}, got "
                              f"{type(value).__name__} {value!r}")
        return [_coerce(item, item_type, f"{key}[{k}]", source) for k, item in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}' must be a mapping, got {type(value).__name__}")
        return _build(tp, value, key, source)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a programming error in the dataclasses above
        raise TypeError(f"unsupported config field type {tp!r}")
    hint = f" (quote it to mean text: \"{value}\")" if tp is str and isinstance(value, (int, float, bool)) else ""
    if tp is bool:
        hint = " (true or false)"
    raise ConfigError(
        f"{source}: key '{key}' expects {tp.__name__}, got {type(value).__name__} {value!r}{hint}"
    )


def _build(cls: type, data: dict, prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(
                f"{source}: unknown key '{dotted}' (expected one of: {', '.join(sorted(names))})"
            )
        kwargs[key] = _coerce(value, hints[key], dotted, source)
    return cls(**kwargs)


# Validation renders "with everything else as in training" (official test settings): keys the validation
# section leaves out are taken from the train section rather than from the defaults.
INHERITED_VALIDATION_KEYS = ("num_coarse", "num_fine", "lindisp", "white_background", "chunksize", "netchunk")


def _inherit_validation_settings(data: dict) -> dict:
    nerf = data.get("nerf")
    if not isinstance(nerf, dict) or not isinstance(nerf.get("train"), dict):
        return data
    validation = nerf.get("validation") if nerf.get("validation") is not None else {}
    if not isinstance(validation, dict):
        return data
    inherited = {k: nerf["train"][k] for k in INHERITED_VALIDATION_KEYS if k in nerf["train"] and k not in validation}
    return {**data, "nerf": {**nerf, "validation": {**validation, **inherited}}}


def config_from_dict(data: dict, source: str = "<dict>") -> Config:
    """Build and validate a Config from nested plain data (as read from YAML)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    cfg = _build(Config, _inherit_validation_settings(data), "", source)
    validate(cfg, source)
    return cfg


def models_config_from_dict(data: dict, source: str) -> ModelsConfig:
    """Build and validate just a `models` section (e.g. the one stored inside a checkpoint)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: 'models' must be a mapping")
    models = _build(ModelsConfig, data, "models", source)
    validate_model(models.coarse, "models.coarse", source)
    if models.fine is not None:
        validate_model(models.fine, "models.fine", source)
    return models


def voxel_grid_config_from_dict(data: Optional[dict], source: str) -> VoxelGridConfig:
    """The voxel_grid: section alone (e.g. from a checkpoint's stored config); defaults when absent."""
    return _build(VoxelGridConfig, data or {}, "voxel_grid", source)


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value (positional arguments go before --set)")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {text!r}: malformed key {key!r}")
    try:
        value = yaml.load(raw, Loader=_StrictLoader) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({err})") from None
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of `data` with each `section.key=value` override set (nested keys created)."""
    data = copy.deepcopy(data) if data else {}
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return data


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last, silently) and
    reads only true / false as booleans (YAML 1.2): YAML 1.1's yes, no, on, off stay text, so that a boolean
    key given one is refused and a text key (experiment.id: no) keeps it."""


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges; SafeLoader resolves it below
            continue
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, collections.abc.Hashable):  # SafeLoader's own error names it below
            continue
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice in one mapping",
                                                    key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def read_yaml(path: str) -> dict:
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = yaml.load(f, Loader=_StrictLoader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; expected a YAML config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (it is not UTF-8); expected a YAML config file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}: malformed YAML{line}: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(path: str, overrides: Optional[list[str]] = None) -> Config:
    """Read a YAML config strictly, apply `--set` overrides, validate."""
    data = apply_overrides(read_yaml(path), overrides or [])
    source = path if not overrides else f"{path} (with --set overrides)"
    return config_from_dict(data, source)


def save_config(cfg: Config, path: str) -> None:
    """Write the resolved config as YAML (atomically: an OSError names the file, which is then unchanged)."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    atomic_write(path, lambda f: f.write(text), binary=False, prefix=".config-")


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """`--set section.key=value [section.key=value ...]`, repeatable: both `--set a.b=1 --set c.d=2` and
    `--set a.b=1 c.d=2` work (read them with `overrides_from`)."""
    parser.add_argument("--set", action="append", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                        help="override config values, e.g. --set experiment.train_iters=1000 dataset.half_res=true "
                             "(repeatable)")


def overrides_from(values: list) -> list[str]:
    """The overrides of `add_set_argument`'s list of lists, in command-line order."""
    return [text for group in values for text in (group if isinstance(group, list) else [group])]
