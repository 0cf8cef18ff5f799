"""One registry per concept: a name -> class table that each class joins where it is defined.

    OBJECTIVES = Registry("objective")

    @OBJECTIVES.register
    class MDLM(DiffusionObjective):
        name = "mdlm"

The name is the one a user types (`--objective mdlm`) and the one saved in a run's config, so a
class's `name` is its identity: two classes may not share one.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T", bound=type)


class Registry(dict[str, T], Generic[T]):
    def __init__(self, concept: str):
        super().__init__()
        self.concept = concept

    def register(self, cls: T) -> T:
        """Class decorator: add `cls` under `cls.name`."""
        if cls.name in self:
            raise ValueError(f"two {self.concept}s are named {cls.name!r}: {self[cls.name]} and {cls}")
        self[cls.name] = cls
        return cls

    def names(self) -> list[str]:
        return sorted(self)
