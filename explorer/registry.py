"""A registry by name: tasks, techniques and executors are looked up here.

Modelled on lm-evaluation-harness's ``lm_eval/api/registry.py``: register under
one or more names, ``get`` returns the object, an unknown name lists the known
ones and suggests the nearest (a typo gets "did you mean 'quantize'?"), and an
optional base class is checked at registration, so a wrong object is refused
where it is registered rather than where it is first used.

`loaded` is the kernel's weak registry of loaded models: `explorer.load` fills
it, and the lab lists its names beside the zoo's (a model dropped by its user
drops out of it).
"""
from __future__ import annotations

import difflib
import weakref
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, base: type | None = None):
        self.kind = kind
        self.base = base
        self._items: dict[str, T] = {}

    def register(self, *names: str) -> Callable[[T], T]:
        if not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise ValueError(f"{self.kind} registry: names={names!r}; give one or more non-empty names")

        def deco(obj: T) -> T:
            self.check(obj)
            for name in names:
                if name in self._items and self._items[name] is not obj:
                    raise ValueError(f"{self.kind} {name!r} is already registered (to {self._items[name]!r})")
                self._items[name] = obj
            return obj

        return deco

    def check(self, obj: object) -> None:
        """Refuse an object that is not (a subclass or an instance of) the registry's base class."""
        if self.base is None:
            return
        ok = issubclass(obj, self.base) if isinstance(obj, type) else isinstance(obj, self.base)
        if not ok:
            raise TypeError(f"{self.kind} registry: {obj!r} is not a {self.base.__module__}.{self.base.__qualname__}; "
                            f"a {self.kind} must derive from it")

    def get(self, name: str) -> T:
        if not isinstance(name, str) or name not in self._items:
            raise KeyError(f"unknown {self.kind} {name!r}; {self.suggest(name)}known: {', '.join(self.names())}")
        return self._items[name]

    def suggest(self, name: object) -> str:
        """'did you mean 'x'? ' for the nearest known name, or ''."""
        close = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.6) if isinstance(name, str) else []
        return f"did you mean {close[0]!r}? " if close else ""

    def unregister(self, name: str) -> None:
        """Remove `name` (a notebook or a test that registered its own cleans up with this)."""
        self.get(name)
        del self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


# Every model `explorer.load` returned in this process, by the name it was loaded under,
# held weakly: the lab lists them; a model no one holds any more leaves on its own.
loaded: "weakref.WeakValueDictionary[str, object]" = weakref.WeakValueDictionary()
