"""Frozen, validated, JSON round-tripping configuration dataclasses.

Every architecture in the zoo has one config class, written as::

    @dataclasses.dataclass(frozen=True)
    class MyModelConfig(Config):
        width: int = 64

        def validate(self) -> None:
            require(self.width > 0, "width must be positive")

`Config.to_dict` / `Config.from_dict` convert to and from plain JSON values; a nested
config field is written as a nested object and a tuple as a list. `from_dict` refuses a
field the class does not know, naming it, so a checkpoint written by a newer version never
loads silently wrong.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A configuration value or a serialised configuration is invalid."""


def require(condition: bool, message: str) -> None:
    """Raise `ConfigError(message)` unless `condition` holds."""
    if not condition:
        raise ConfigError(message)


def require_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    """Raise `ConfigError` unless `value` is one of `choices`."""
    require(value in choices, f"{name} must be one of {choices}, got {value!r}")


def require_positive(**values: Any) -> None:
    """Raise `ConfigError` naming the first keyword argument that is not > 0."""
    for name, value in values.items():
        require(value > 0, f"{name} must be positive, got {value!r}")


def require_probability(**values: Any) -> None:
    """Raise `ConfigError` naming the first keyword argument outside [0, 1)."""
    for name, value in values.items():
        require(0.0 <= value < 1.0, f"{name} must be in [0, 1), got {value!r}")


class Config:
    """Base class of architecture configs (subclasses are frozen dataclasses)."""

    _type_hints: ClassVar[dict[str, Any]]

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if isinstance(value, list):  # JSON gives lists; configs hold hashable tuples
                object.__setattr__(self, field.name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Check the field values; raise `ConfigError` naming the bad field."""

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON values (nested configs become nested dicts)."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if isinstance(value, Config):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[field.name] = value
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build the config from `to_dict` output; unknown fields raise `ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{cls.__name__} has no field(s) {unknown}; known fields are {sorted(names)}"
            )
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, value in data.items():
            nested = _config_class(hints[name])
            if nested is not None:
                value = nested.from_dict(value)
            elif isinstance(value, list):  # JSON arrays are the configs' tuples
                value = tuple(value)
            else:
                _check_number(cls.__name__, name, hints[name], value)
            kwargs[name] = value
        try:
            return cls(**kwargs)
        except TypeError as error:
            raise ConfigError(f"{cls.__name__}: {error}") from None


def _check_number(owner: str, name: str, hint: Any, value: Any) -> None:
    """Refuse a JSON value of the wrong kind for a numeric field: ``true`` is an int to
    Python and ``"64"`` would fail later with a less clear message."""
    allowed = set(typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,))
    numeric = allowed - {type(None)}
    if not numeric or not numeric <= {int, float} or (value is None and type(None) in allowed):
        return
    if isinstance(value, bool) or not isinstance(value, tuple(numeric)):
        kind = " or ".join(sorted(t.__name__ for t in numeric))
        raise ConfigError(f"{owner}.{name} must be {kind}, got {value!r}")


def _config_class(hint: Any) -> type[Config] | None:
    """The `Config` subclass a type hint names (directly or as `X | None`), else None."""
    candidates = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, Config):
            return candidate
    return None
