"""Lazy zha-quirks: the same registry answers as a full `zhaquirks.setup()`, for a fraction."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from drivers.zigbee import quirks
from tests.support import ROOT

pytestmark = pytest.mark.stack

# Prints {"manufacturer\tmodel": [quirk sources in registry order], "*": [wildcard sources]}
# after loading quirks one way or the other, plus the RSS.
_DUMP = """
import json, random, sys, psutil
from drivers.zigbee import quirks
import zha.quirks
mode = sys.argv[1]
if mode == "full":
    quirks.full_resolver()
else:
    lazy = quirks.LazyQuirks(json.loads(quirks.SHIPPED.read_text()))
    groups = list(range(len(lazy._groups)))
    if mode == "yale":
        groups = lazy.groups_for("Yale", "YRD220/240 TSDB")
    else:
        random.Random(int(mode)).shuffle(groups)
    lazy._load(groups)
reg = zha.quirks.DEVICE_REGISTRY
def ident(e):
    return [e.source.module, e.source.label, e.source.line]
out = {f"{k.manufacturer}\\t{k.model}": [ident(e) for e in v]
       for k, v in reg._registry.items() if v}
out["*"] = [ident(e) for e in reg._wildcard_registry]
out["rss_mib"] = psutil.Process().memory_info().rss / 2**20
print(json.dumps(out))
"""


def dump(mode: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _DUMP, mode], capture_output=True, text=True, check=True, cwd=ROOT
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_shipped_index_is_for_the_installed_versions() -> None:
    index = json.loads(quirks.SHIPPED.read_text())
    assert index["versions"] == quirks.versions()
    assert index["format"] == quirks.INDEX_FORMAT


def test_lazy_loading_gives_full_setups_registry_in_any_order() -> None:
    """Whatever order devices bring their quirk components in, every key's entries (and so
    zha's first match) are those of a full setup(), in the same order."""
    full = dump("full")
    full_rss = full.pop("rss_mib")
    lazy = dump("1")  # every component, in a shuffled order
    lazy.pop("rss_mib")
    assert lazy == full
    yale = dump("yale")
    yale_rss = yale.pop("rss_mib")
    key = "Yale\tYRD220/240 TSDB"
    assert yale[key] == full[key]
    assert yale["*"] == full["*"]
    assert yale_rss < full_rss - 20  # MiB: the point of it


async def test_a_stale_index_is_rebuilt_once_in_a_child_and_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = json.loads(quirks.SHIPPED.read_text())
    stale = tmp_path / "shipped.json"
    stale.write_text(json.dumps({"format": quirks.INDEX_FORMAT, "versions": {"zha": "0"}}))
    monkeypatch.setattr(quirks, "SHIPPED", stale)
    index = await quirks.load_index(tmp_path)
    assert index == shipped  # the build is deterministic
    cached = tmp_path / "zigbee-quirks-index.json"
    assert json.loads(cached.read_text()) == index

    async def no_child(*_: Any, **__: Any) -> None:
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(quirks.asyncio, "create_subprocess_exec", no_child)
    assert await quirks.load_index(tmp_path) == index
