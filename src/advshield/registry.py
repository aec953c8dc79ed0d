"""One small registry type. Instances enumerate attacks, defenses and model architectures so the CLI,
docs and contract tests can list every entry."""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import AdvshieldError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a lowercase name to a factory (class or function) plus a one-line description."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        """Decorator: ``@ATTACKS.register("fgsm", "one signed-gradient step")``."""

        def deco(obj: T) -> T:
            self.add(name, obj, help)
            return obj

        return deco

    def add(self, name: str, obj: T, help: str = "") -> None:
        key = name.lower()
        if key in self._items:
            raise ValueError(f"{self.kind} {key!r} is already registered")
        self._items[key] = obj
        doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
        self._help[key] = help or (doc[0] if doc else "")

    def get(self, name: str) -> T:
        key = name.lower()
        if key not in self._items:
            known = ", ".join(sorted(self._items)) or "none"
            raise AdvshieldError(f"unknown {self.kind} {name!r} (known: {known})")
        return self._items[key]

    def help(self, name: str) -> str:
        return self._help[name.lower()]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


ATTACKS: Registry = Registry("attack")
DEFENSES: Registry = Registry("defense")
MODELS: Registry = Registry("model architecture")
