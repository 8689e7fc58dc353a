"""The one config mechanism: pydantic schemas, loaded from the YAML in configs/, with `--set` on top.

Each stage's schema sits in its own package (solo/data/config.py, solo/tokens/config.py,
solo/train/config.py, solo/evals/config.py, solo/serving/config.py), every field documented by the
docstring under it; the whole pipeline's schema, one section per stage, is `solo.pipeline.PipelineConfig`.

A config file is validated in full before any work starts; an unknown key or a bad value fails with
the dotted field named, and with where the value came from: the file, a `--set`, or the defaults.
`--set a.b=value` overrides apply on top of the file, the value read as YAML (so
`--set pretrain.max_steps=10` is an int).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from solo.errors import SoloError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"


def checkout_root() -> Path:
    """Where relative paths in configs are anchored: the user's checkout, also inside a Ray job,
    which runs from Ray's copy of it (the submitter passes SOLO_CHECKOUT along)."""
    return Path(os.environ.get("SOLO_CHECKOUT") or REPO_ROOT)


class Schema(BaseModel):
    """A settings schema: unknown keys are errors, values are frozen, and the docstring under each field is
    its description (what it does, its unit)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    # Settings that do not change what a stage produces, left out of its fingerprint.
    unfingerprinted: ClassVar[frozenset[str]] = frozenset()

    def fingerprint(self) -> str:
        """A stable hash of the settings: what a stage manifest records and compares."""
        canonical = json.dumps(self.model_dump(mode="json", exclude=set(self.unfingerprinted)), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


S = TypeVar("S", bound=Schema)


class ConfigError(SoloError):
    pass


def parse_override(text: str) -> tuple[list[str], object]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set {text}: the value is not valid YAML") from None
    return key.strip().split("."), value


def apply_override(tree: dict, path: list[str], value: object) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if isinstance(child, str):
            # A word that stands for a whole section (`strategy: auto`): writing inside it means the section,
            # spelled out. What does not fit the schema then fails validation, naming this --set.
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


def _source(loc: tuple, overridden: list[list[str]], file: str | None) -> str:
    """Where the value an error is about came from: the `--set` that wrote it (or wrote inside it),
    else the file, else the schema's defaults."""
    field = [str(p) for p in loc]
    for path in overridden:
        shared = min(len(path), len(field))
        if field and path[:shared] == field[:shared]:
            return f"--set {'.'.join(path)}"
    if file is not None:
        return file
    return "--set" if overridden and not field else "defaults"


# Prefixes the tags of a discriminated union (pydantic's Tag): they sit in an error's location, where they
# name no setting, and are left out of the message.
UNION_TAG = "="


def _format_errors(err: ValidationError, overridden: list[list[str]], file: str | None) -> str:
    parts = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not str(p).startswith(UNION_TAG))
        message = e["msg"].removeprefix("Value error, ")
        if not loc:  # a rule across settings (a model validator), whose message names them itself
            parts.append(message)
            continue
        parts.append(f"{_source(loc, overridden, file)}: {'.'.join(str(p) for p in loc)}: {message}")
    return "; ".join(parts)


def load_config(schema: type[S], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> S:
    """Read YAML (or nothing: the schema's defaults), apply `--set` overrides, validate."""
    tree: dict = {}
    file = None
    if path is not None:
        file = str(path)
        if not Path(path).is_file():
            raise ConfigError(f"{file}: no such config file")
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{file}: not valid YAML: {e}".splitlines()[0]) from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: expected a mapping at the top level")
        tree = loaded
    overridden = []
    for text in overrides:
        key, value = parse_override(text)
        apply_override(tree, key, value)
        overridden.append(key)
    try:
        return schema.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, overridden, file)) from None


def default_config_path(folder: str, name: str = "default") -> Path:
    return CONFIG_DIR / folder / f"{name}.yaml"
