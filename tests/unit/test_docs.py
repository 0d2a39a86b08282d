"""README.md and RELIABILITY.md cite tests, metrics and files that exist.

Operators and reviewers follow these citations: a test renamed or removed, a metric renamed, a
file moved leaves a guarantee "proved by" nothing. Only inline code spans are read (prose is
never taken for a citation):

- `tests/x/test_y.py::test_z` names a test defined in that file (`*` as a glob); `::test_z`
  alone continues the last test file cited in the same paragraph or table row; a bare
  `test_y.py` must name exactly one file under tests/;
- a relative path (`gatewayd/store.py`, `tests/zwave/mock`, `drivers/sim`) exists, when its
  first part is a top-level entry of the repository or it ends in a file extension;
- every `gatewayd_*` metric named anywhere is one gatewayd/metrics.py defines, under the name
  Prometheus shows (a counter with `_total`; a histogram with `_bucket`, `_count`, `_sum`).
"""

from __future__ import annotations

import ast
import fnmatch
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from tests.support import ROOT

DOCS = ("README.md", "RELIABILITY.md")
# Directories a run writes that hold no tracked file, so a fresh clone lacks them.
GENERATED = frozenset({"bench/results"})
FILE_EXTENSIONS = frozenset(
    {"py", "md", "toml", "sh", "service", "sysusers", "cjs", "js", "json", "html", "lock", "txt"}
)

_FENCE = re.compile(r"^```.*?^```[^\n]*$", re.M | re.S)
_SPAN = re.compile(r"`([^`]+)`")
_CITATION = re.compile(r"(?P<file>[\w./-]*test_\w+\.py)?::(?P<test>test_[\w*]+)(?:\[[^\]]*\])?")
_TEST_FILE = re.compile(r"(?:[\w.-]+/)*test_\w+\.py")
_PATH = re.compile(r"[\w-][\w.-]*(?:/[\w.*-]+)+/?")
_METRIC = re.compile(r"(?<![\w/.-])gatewayd_[a-z0-9_]+")
_FAMILY_SUFFIXES = {
    "CounterMetricFamily": ("_total",),
    "GaugeMetricFamily": ("",),
    "HistogramMetricFamily": ("_bucket", "_count", "_sum"),
    "SummaryMetricFamily": ("_count", "_sum"),
    "InfoMetricFamily": ("_info",),
}


def _blocks(text: str) -> Iterator[str]:
    """Paragraphs, each table row on its own, fenced code blocks left out."""
    for para in re.split(r"\n[ \t]*\n", _FENCE.sub("", text)):
        lines = para.split("\n")
        if all(line.lstrip().startswith("|") for line in lines):
            yield from lines
        else:
            yield para


def _words(block: str) -> Iterator[str]:
    """Each whitespace-separated word of each inline code span, in order."""
    for span in _SPAN.finditer(block):
        for word in span.group(1).split():
            yield word.strip("\"'(),;")


@cache
def _tests_in(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return frozenset(
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    )


@cache
def _test_files_named(name: str) -> tuple[Path, ...]:
    return tuple(sorted((ROOT / "tests").rglob(name)))


def _test_file(cited: str) -> tuple[Path | None, str]:
    """The file a citation names, or None and why not."""
    if "/" in cited:
        path = ROOT / cited
        return (path, "") if path.is_file() else (None, "no such file")
    found = _test_files_named(cited)
    if len(found) == 1:
        return found[0], ""
    if not found:
        return None, "no such file under tests/"
    where = ", ".join(str(p.relative_to(ROOT)) for p in found)
    return None, f"ambiguous ({where}): cite its path"


def _is_repo_path(word: str) -> bool:
    if not _PATH.fullmatch(word) or word.startswith("."):
        return False
    first, _, rest = word.partition("/")
    last = rest.rstrip("/").rsplit("/", 1)[-1]
    ext = last.rsplit(".", 1)[1] if "." in last else ""
    return (ROOT / first).exists() or ext in FILE_EXTENSIONS


def _exists(path: str) -> bool:
    return path.rstrip("/") in GENERATED or (ROOT / path).exists()


def dangling_references(doc: str, text: str) -> list[str]:
    """Every citation in `text` (the document `doc`) that names nothing, one line each."""
    problems: list[str] = []
    for block in _blocks(text):
        current: str | None = None  # the test file a bare `::test_x` continues
        for word in _words(block):
            if m := _CITATION.fullmatch(word):
                current = m["file"] or current
                if current is None:
                    problems.append(f"{doc}: `{word}`: no test file cited before it")
                    continue
                path, why = _test_file(current)
                if path is None:
                    problems.append(f"{doc}: `{word}`: {current}: {why}")
                elif not fnmatch.filter(_tests_in(path), m["test"]):
                    problems.append(f"{doc}: `{word}`: no {m['test']} in {current}")
                continue
            if _TEST_FILE.fullmatch(word):
                current = word
                path, why = _test_file(word)
                if path is None:
                    problems.append(f"{doc}: `{word}`: {why}")
            elif _is_repo_path(word) and not _exists(word):
                problems.append(f"{doc}: `{word}`: no such path in the repository")
    for name in sorted(set(_METRIC.findall(text))):
        if name not in defined_metrics():
            problems.append(f"{doc}: {name}: gatewayd/metrics.py defines no such metric")
    return problems


@cache
def defined_metrics() -> frozenset[str]:
    """The sample names gatewayd/metrics.py exposes, read from its `*MetricFamily(...)` calls."""
    tree = ast.parse((ROOT / "gatewayd/metrics.py").read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        kind = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        first = node.args[0]
        if kind in _FAMILY_SUFFIXES and isinstance(first, ast.Constant):
            family = str(first.value).removesuffix("_total")
            names.add(family)
            names.update(family + suffix for suffix in _FAMILY_SUFFIXES[kind])
    return frozenset(names)


def test_metrics_are_read_from_the_metrics_module() -> None:
    names = defined_metrics()
    assert {"gatewayd_info", "gatewayd_actions_total", "gatewayd_tunnel_up"} <= names
    assert "gatewayd_action_duration_seconds_bucket" in names


@pytest.mark.parametrize("doc", DOCS)
def test_docs_cite_only_tests_metrics_and_paths_that_exist(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    problems = dangling_references(doc, text)
    assert not problems, "dangling references:\n" + "\n".join(problems)


def test_a_dangling_citation_is_found() -> None:
    text = "\n".join(
        [
            "| a guarantee | `tests/unit/test_store.py::test_rebase_*`, `::test_no_such_test`,"
            " `tests/unit/test_nowhere.py`, `test_tunnel.py` |",
            "| another row | `::test_orphan` |",
            "",
            "See `gatewayd/nowhere.py`, `drivers/sim`, `bench/results/`, `radio offline/online`,",
            "`gatewayd_tunnel_up`, `gatewayd_actions_total`, `gatewayd_no_such_metric` and",
            "`.venv/bin/pytest tests/unit/test_docs.py::test_a_dangling_citation_is_found -q`.",
            "",
            "```sh",
            "cat `not/a/citation.py`",
            "```",
        ]
    )
    problems = dangling_references("X.md", text)
    assert [p.split(": ", 2)[1] for p in problems] == [
        "`::test_no_such_test`",
        "`tests/unit/test_nowhere.py`",
        "`test_tunnel.py`",
        "`::test_orphan`",
        "`gatewayd/nowhere.py`",
        "gatewayd_no_such_metric",
    ]
