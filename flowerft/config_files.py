"""Where a Config's values come from, and which wins: the dataclass's defaults < the named recipe's
values (RECIPES) < a YAML file (`--config`, a shipped example, a run's config.yaml) < flags.

The values are plain data until `resolve` makes them a Config, which checks them (flowerft/config.py);
unknown keys fail here, naming the close one.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from flowerft.backbones.registry import is_own
from flowerft.config import AUTO, DEFAULTS, FIELDS, FOUND_RATE, FROM_SCRATCH, RECIPES, Config
from flowerft.errors import ConfigError, first_line

# Read, never written: `mixed_precision: true` was the switch before `precision` had a value for it.
# Runs trained then record it in their config.yaml; they must still load, evaluate and resume.
OLD_MIXED_PRECISION = "mixed_precision"


def _loader():
    """yaml.SafeLoader, but reading 1e-3 as the number people mean (YAML 1.1 makes it text).

    PyYAML follows YAML 1.1, whose floats need a dot (1.0e-3); learning rates are written 1e-3.
    A subclass, so PyYAML's own SafeLoader is left as it is; like it, it runs no code.
    """
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
        list("-+0123456789."),
    )
    return Loader


def shipped_configs() -> dict[str, Path]:
    """The example configs installed with flowerft (flowerft/configs, the repository's configs/), by name."""
    folder = Path(__file__).parent / "configs"
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))}


def config_path(name: str | Path) -> Path:
    """`--config`'s file: a path, or the name of a shipped example (`stable`, `offline-mobilenet`)."""
    path = Path(name)
    if not path.exists() and path.parent == Path(".") and path.stem in (shipped := shipped_configs()):
        return shipped[path.stem]
    return path


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file; plain data only (yaml.safe_load runs no code)."""
    import yaml  # not at the top: `flowerft --help` must stay instant

    path = config_path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_loader())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or (first_line(e) if str(e).strip() else "invalid YAML")
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def given_values(yaml_path: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """What the user set: the YAML file's values, then the overrides that are not None."""
    values: dict[str, Any] = {}
    sources = [read_yaml(yaml_path) if yaml_path else {}, {k: v for k, v in overrides.items() if v is not None}]
    for source in sources:
        source = {k: v for k, v in source.items() if k != FOUND_RATE}  # a record of the run, not a setting
        unknown = sorted(set(source) - FIELDS - {OLD_MIXED_PRECISION}, key=str)
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), FIELDS, n=1)
            hint = f"did you mean {close[0]}?" if close else f"known keys are {', '.join(sorted(FIELDS))}"
            raise ConfigError(f"{unknown[0]}: unknown config key; {hint}")
        values.update(source)
    return _fold_old_augment(_fold_mixed_precision(values))


def _fold_mixed_precision(values: dict[str, Any]) -> dict[str, Any]:
    """`mixed_precision: true` as `precision: mixed`, which means what it meant: float16 on GPUs,
    bfloat16 elsewhere, unless `precision` names a type itself (then that type, as before)."""
    if OLD_MIXED_PRECISION not in values:
        return values
    values = dict(values)
    switch = values.pop(OLD_MIXED_PRECISION)
    if not isinstance(switch, bool):
        raise ConfigError(f"{OLD_MIXED_PRECISION}: expected bool, got {switch!r}")
    if switch and values.get("precision", DEFAULTS["precision"]) in ("float32", "auto"):
        values["precision"] = "mixed"
    return values


def rate_option(text: str | None) -> float | str | None:
    """--lr-finetune's text: a number, or auto (anything else is left for the Config's check to name)."""
    if text is None or text.strip().lower() == AUTO:
        return text and AUTO
    try:
        return float(text)
    except ValueError:
        return text


def _fold_old_augment(values: dict[str, Any]) -> dict[str, Any]:
    """`augment: true` as `augment: basic` (the flips, rotations and zooms it meant), `false` as `none`:
    `augment` was a switch before it named a policy, and runs that recorded one must still load and resume."""
    if not isinstance(values.get("augment"), bool):
        return values
    return values | {"augment": "basic" if values["augment"] else "none"}


def resolve(given: dict[str, Any]) -> Config:
    """The Config for what the user set: defaults < its recipe's values (< FROM_SCRATCH) < `given`."""
    name = given.get("recipe", DEFAULTS["recipe"])
    if not isinstance(name, str) or name not in RECIPES:
        raise ConfigError(f"recipe: must be one of {', '.join(RECIPES)}, got {name!r}")
    scratch = FROM_SCRATCH if given.get("weights", DEFAULTS["weights"]) == "none" else {}
    return Config(**(RECIPES[name] | scratch | given))


def make_config(yaml_path: str | Path | None = None, **overrides: Any) -> Config:
    """Defaults, then the recipe's values, then the YAML file, then the overrides that are not None."""
    return resolve(given_values(yaml_path, **overrides))


# Paths a run records: stored absolute, so the run works from any working directory.
PATH_KEYS = ("data_dir", "tfds_data_dir", "weights", "labels", "backbone")
# A local dataset when such a path exists, else a name (a Hugging Face hub id) kept as given.
PATH_OR_NAME_KEYS = ("hf_dataset",)


def absolute_paths(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with its data folders and weights file as absolute paths (symlinks kept as given)."""
    def absolute(key, value):
        if key in PATH_OR_NAME_KEYS and isinstance(value, str) and os.path.exists(os.path.expanduser(value)):
            return os.path.abspath(os.path.expanduser(value))
        if key not in PATH_KEYS or not isinstance(value, str) or value in ("", "imagenet", "none"):
            return value
        if key == "backbone" and (not is_own(value) or "://" in value):  # a name, or a preset's address
            return value
        return os.path.abspath(os.path.expanduser(value))  # abspath also folds "a/../b"

    return {key: absolute(key, value) for key, value in values.items()}
