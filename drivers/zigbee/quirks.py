"""zha-quirks, imported only where a device needs them.

`zhaquirks.setup()` imports every quirk module (~1,400 quirks for every kind of device): seconds
of start-up and ~50 MiB of memory on a box that drives a few door locks. Here the quirk modules
are imported when a device is resolved, and only those that can match it.

Which modules can match which device comes from an index of zha's quirk registry
(`quirks_index.json`, built by `python -m drivers.zigbee.quirks` in a process that runs the full
`setup()`). zha's registry looks a device up under (manufacturer, model), (manufacturer, any),
(any, model) and then tries the wildcard quirks. The index groups modules into components: two
modules share a component when they register under a common key, and all wildcard modules form
one. A component is always imported whole, in `setup()`'s order, followed by the same drain of
legacy quirks `setup()` does. Every key's entries therefore come from one component, in
`setup()`'s order, and zha's own `resolve` gives the answer it gives after a full `setup()`.

The shipped index is for the pinned zha/zha-quirks versions; with other versions it is rebuilt
once in a child process (so this process never holds every quirk) and cached in the state dir.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import structlog

log = structlog.get_logger(__name__)

SHIPPED: Final = Path(__file__).with_name("quirks_index.json")
_ROOT: Final = Path(__file__).resolve().parents[2]  # where `-m drivers.zigbee.quirks` runs
INDEX_FORMAT: Final = 1
_PACKAGES: Final = ("zha-quirks", "zha")
_ANY: Final = "\x00"  # the index's spelling of "any manufacturer / model" (zha's None)


def versions() -> dict[str, str] | None:
    """Installed versions of the packages the index depends on; None when zha-quirks is absent."""
    try:
        return {p: importlib.metadata.version(p) for p in _PACKAGES}
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------- building the index


def build_index() -> dict[str, Any]:
    """Import every quirk as `zhaquirks.setup()` does, and describe the registry it fills."""
    import pkgutil

    zhaquirks: Any = importlib.import_module("zhaquirks")
    registry: Any = importlib.import_module("zha.quirks").DEVICE_REGISTRY
    parent: dict[str, str] = {}

    def find(m: str) -> str:
        parent.setdefault(m, m)
        while parent[m] != m:
            parent[m] = parent[parent[m]]
            m = parent[m]
        return m

    def union(modules: Iterable[str]) -> None:
        roots = [find(m) for m in modules]
        for other in roots[1:]:
            parent[other] = roots[0]

    # setup()'s loop; a module and the quirk modules its import pulls in share a component.
    for _, name, _ in pkgutil.walk_packages(zhaquirks.__path__, "zhaquirks."):
        before = set(sys.modules)
        importlib.import_module(name)
        union([name, *(m for m in sys.modules if m not in before and m.startswith("zhaquirks."))])
    zhaquirks._register_pending_quirks()
    order = {name: i for i, name in enumerate(sys.modules) if name.startswith("zhaquirks.")}

    keys: dict[tuple[str, str], set[str]] = {}
    for key, entries in registry._registry.items():
        mods = {_module(e) for e in entries}
        if mods:
            keys[(key.manufacturer or _ANY, key.model or _ANY)] = mods
            union(mods)
    wildcard = {_module(e) for e in registry._wildcard_registry}
    union(wildcard)
    groups: dict[str, set[str]] = {}
    for m in list(parent):
        groups.setdefault(find(m), set()).add(m)
    ordered = sorted(groups.values(), key=lambda g: min(order.get(m, 0) for m in g))
    number = {m: i for i, g in enumerate(ordered) for m in g}

    def by_import(mods: Iterable[str]) -> list[str]:
        return sorted(mods, key=lambda m: order.get(m, 0))

    return {
        "format": INDEX_FORMAT,
        "versions": versions(),
        "groups": [by_import(g) for g in ordered],
        "wildcard": number[next(iter(wildcard))] if wildcard else None,
        "keys": sorted([man, mod, number[next(iter(mods))]] for (man, mod), mods in keys.items()),
    }


def _module(entry: Any) -> str:
    source = entry.source
    if source is None or not str(source.module).startswith("zhaquirks."):
        raise RuntimeError(f"a quirk entry without a zhaquirks module: {entry!r}")
    return str(source.module)


def _valid(index: Any, want: Mapping[str, str]) -> bool:
    return (
        isinstance(index, dict)
        and index.get("format") == INDEX_FORMAT
        and index.get("versions") == want
    )


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


async def load_index(cache_dir: Path) -> dict[str, Any] | None:
    """The index for the installed versions: shipped, cached, or built now in a child process."""
    want = versions()
    if want is None:
        return None
    for path in (SHIPPED, cache_dir / "zigbee-quirks-index.json"):
        index = _read(path)
        if _valid(index, want):
            return dict(index)
    cached = cache_dir / "zigbee-quirks-index.json"
    log.info("zigbee.quirks_index_building", versions=want)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "drivers.zigbee.quirks",
        str(cached),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(_ROOT),
    )
    _, err = await proc.communicate()
    index = _read(cached)
    if proc.returncode != 0 or not _valid(index, want):
        log.warning("zigbee.quirks_index_failed", error=err.decode(errors="replace")[-300:])
        return None
    return dict(index)


def write_index(path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(build_index(), separators=(",", ":")) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------- resolving


class LazyQuirks:
    """A zigpy device resolver that imports a device's quirk components on first sight."""

    def __init__(self, index: Mapping[str, Any]) -> None:
        self._groups: list[list[str]] = [list(g) for g in index["groups"]]
        self._wildcard: int | None = index["wildcard"]
        self._keys: dict[tuple[str, str], int] = {(a, b): g for a, b, g in index["keys"]}
        self._loaded: set[int] = set()
        self._zhaquirks: Any = importlib.import_module("zhaquirks")
        self._registry: Any = importlib.import_module("zha.quirks").DEVICE_REGISTRY
        self._drain: Callable[[], None] = self._zhaquirks._register_pending_quirks

    @property
    def modules_loaded(self) -> int:
        return sum(len(self._groups[g]) for g in self._loaded)

    def groups_for(self, manufacturer: str | None, model: str | None) -> list[int]:
        man, mod = manufacturer or _ANY, model or _ANY
        wanted = [self._keys.get(k) for k in ((man, mod), (man, _ANY), (_ANY, mod))]
        wanted.append(self._wildcard)
        return sorted({g for g in wanted if g is not None})

    def _load(self, groups: Iterable[int]) -> None:
        for g in groups:
            if g in self._loaded:
                continue
            for name in self._groups[g]:
                importlib.import_module(name)
            self._drain()  # legacy quirks into zha's registry, as setup() does after importing
            self._loaded.add(g)
            log.debug("zigbee.quirks_loaded", modules=self._groups[g])

    def __call__(self, zdev: Any) -> Any:
        self._load(self.groups_for(zdev.manufacturer, zdev.model))
        return self._registry.resolve(zdev)


def full_resolver() -> Callable[[Any], Any] | None:
    """Every quirk, the way zha does it (`setup()`); None if zha-quirks is not installed."""
    try:
        zhaquirks = importlib.import_module("zhaquirks")
        registry = importlib.import_module("zha.quirks")
    except ImportError:
        return None
    zhaquirks.setup()
    resolve: Callable[[Any], Any] = registry.DEVICE_REGISTRY.resolve
    return resolve


_resolver: Callable[[Any], Any] | None = None


async def resolver(cache_dir: Path) -> Callable[[Any], Any] | None:
    """The process's quirks resolver: lazy when an index is at hand, else every quirk."""
    global _resolver
    if _resolver is None:
        index = await load_index(cache_dir)
        if index is None:
            _resolver = full_resolver()
        else:
            try:
                _resolver = LazyQuirks(index)
            except (ImportError, AttributeError):
                _resolver = full_resolver()
    return _resolver


if __name__ == "__main__":
    write_index(Path(sys.argv[1]) if len(sys.argv) > 1 else SHIPPED)
