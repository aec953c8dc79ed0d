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
        self._aliases: dict[str, str] = {}

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

    def alias(self, alias: str, name: str) -> None:
        """Let ``alias`` (e.g. a paper's name) resolve to the registered ``name``; aliases are not listed."""
        key = alias.lower()
        if key in self._items or key in self._aliases:
            raise ValueError(f"{self.kind} {key!r} is already registered")
        self.get(name)
        self._aliases[key] = name.lower()

    def get(self, name: str) -> T:
        key = self._aliases.get(name.lower(), name.lower())
        if key not in self._items:
            known = ", ".join(sorted(self._items)) or "none"
            raise AdvshieldError(f"unknown {self.kind} {name!r} (known: {known})")
        return self._items[key]

    def help(self, name: str) -> str:
        key = name.lower()
        return self._help[self._aliases.get(key, key)]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name.lower() in self._items or name.lower() in self._aliases)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        """``Registry('attack', 14 entries: bim, difgsm, ...)``; up to 20 names, aliases not listed."""
        names = self.names()
        shown = ", ".join(names[:20]) + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
        entries = f"{len(names)} {'entry' if len(names) == 1 else 'entries'}"
        return f"Registry({self.kind!r}, {entries}{': ' + shown if names else ''})"


ATTACKS: Registry = Registry("attack")
DEFENSES: Registry = Registry("defense")
MODELS: Registry = Registry("model architecture")
PURIFIERS: Registry = Registry("purifier architecture")
UNIVERSAL: Registry = Registry("universal attack")
