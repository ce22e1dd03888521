"""The model registry: one entry per family member, with its training defaults.

Each entry carries the width range and resolution list of SPEC section 3, so that
configs, the CLI and exports can fall back on them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import UsageError
from ..slimmable import SlimmableNet

Builder = Callable[..., SlimmableNet]
B = TypeVar("B", bound=Builder)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Builder
    width_range: tuple[float, float]
    resolutions: tuple[int, ...]
    num_classes: int
    description: str

    @property
    def base_resolution(self) -> int:
        return max(self.resolutions)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    width_range: tuple[float, float],
    resolutions: tuple[int, ...],
    num_classes: int,
    description: str = "",
) -> Callable[[B], B]:
    """Register ``builder`` under ``name``; registering a name twice raises."""

    def deco(builder: B) -> B:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelInfo(
            name, builder, tuple(width_range), tuple(resolutions),  # type: ignore[arg-type]
            num_classes, description or (builder.__doc__ or "").strip().splitlines()[0],
        )
        return builder

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_model_info(name: str) -> ModelInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}"
        ) from None


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    width_range: tuple[float, float] | None = None,
    **kwargs: Any,
) -> SlimmableNet:
    """Build a registered model; its allocated (maximum) width is ``width_range[1]``."""
    info = get_model_info(name)
    wr = tuple(width_range) if width_range is not None else info.width_range
    if len(wr) != 2 or not 0 < wr[0] <= wr[1]:
        raise UsageError(f"width range must be [min, max] with 0 < min <= max, got {list(wr)}")
    model = info.builder(
        num_classes=info.num_classes if num_classes is None else num_classes,
        max_width=float(wr[1]),
        **kwargs,
    )
    model.width_range = (float(wr[0]), float(wr[1]))
    model.resolutions = info.resolutions
    model.model_name = name
    return model
