"""Name -> class registries filled by decorators: attention kernels, position schemes, reducers."""

from __future__ import annotations

from collections.abc import Callable


def registrar(table: dict[str, type]) -> Callable[[str], Callable[[type], type]]:
    """A decorator factory that files a class under a name in `table` and sets its `name` attribute."""

    def register(name: str) -> Callable[[type], type]:
        def add(cls: type) -> type:
            if name in table:
                raise ValueError(f"{name!r} is registered twice ({table[name].__name__} and {cls.__name__})")
            cls.name = name
            table[name] = cls
            return cls

        return add

    return register
