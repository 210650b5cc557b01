"""The base of every typed settings model in kfmlops, and reading one from a YAML file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the field."""


class SettingsModel(BaseModel):
    """Frozen, and strict about unknown fields. Every optional field defaults to None, so dropping
    Nones (KFP parameters cannot carry null) never changes a setting's meaning."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def parse(model: type[M], raw: dict[str, Any], where: str) -> M:
    """Validate ``raw`` into ``model``; a ConfigError names every bad field, prefixed with ``where``."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{where}: {problems}") from None


def load_yaml(path: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """A YAML mapping and the folder it is in (relative paths inside are relative to it)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(raw).__name__}")
    return raw, path.resolve().parent


def resolve_path(value: str | None, base: Path) -> str | None:
    """A relative local path is made relative to ``base``; URIs and absolute paths are kept."""
    if value is None or "://" in value or os.path.isabs(value):
        return value
    return str((base / value).resolve())
