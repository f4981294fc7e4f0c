"""Named size presets for the demo's dataclass configs ("demo" for users, "test" for CI)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


class PresetConfig:
    """``for_size`` / ``to_dict`` / ``from_dict`` for a dataclass whose class has ``PRESETS``.

    Why shared: the model and SAE training configs both come in the same named
    sizes, and both must refuse unknown fields rather than silently ignore them.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def for_size(cls, size: str, **overrides: Any):
        """The named preset, with any field overridden."""
        if size not in cls.PRESETS:
            raise ValueError(f"unknown {cls.__name__} size {size!r}: use one of {sorted(cls.PRESETS)}")
        return cls(size=size, **{**cls.PRESETS[size], **overrides})  # type: ignore[call-arg]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**values)
