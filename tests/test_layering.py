"""Layer rules of the package, checked on the source (ast), so a wrong import fails here and not in review.

The pure layers (core, codecs, decode) must stay importable and testable without a broker or Faust; the
edge and the API must run without the Faust worker package; the Kafka helpers sit below all of them.
Imports inside functions count too: they are where a layer leak usually hides.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rstscope"

IO_LAYERS = ("rstscope.streams", "rstscope.kafka", "rstscope.edge", "rstscope.api",
             "faust", "confluent_kafka", "aiokafka")


@dataclass(frozen=True)
class Rule:
    packages: tuple[str, ...]  # the rule applies to modules in these packages
    forbidden: tuple[str, ...]  # ... which must not import these modules (or their submodules)
    why: str


RULES = [
    Rule(("rstscope.core", "rstscope.codecs", "rstscope.decode", "rstscope.insights", "rstscope.quic"), IO_LAYERS,
         "the pure layers do no I/O: no Kafka, Faust, edge or API"),
    Rule(("rstscope.edge", "rstscope.api"), ("rstscope.streams",),
         "the edge and the API must not need the Faust worker package"),
    Rule(("rstscope.kafka",), ("rstscope.streams", "rstscope.edge", "rstscope.api"),
         "the Kafka helpers are below the streams, the edge and the API"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _within(name: str, prefixes: tuple[str, ...]) -> str | None:
    for p in prefixes:
        if name == p or name.startswith(p + "."):
            return p
    return None


def imports(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Every module name the source imports, with its line: top level, in functions, relative, and
    ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name."""
    found: list[tuple[int, str]] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def check(rule: Rule, rel_path: str, source: str) -> list[str]:
    """The forbidden imports of one file (``rstscope/...py``), as ``path:line: imports NAME (why)``."""
    path = Path(rel_path)
    module = module_name(ROOT / path)
    if _within(module, rule.packages) is None:
        return []
    out: list[str] = []
    seen: set[tuple[int, str]] = set()
    for line, name in imports(source, module, path.name == "__init__.py"):
        hit = _within(name, rule.forbidden)
        if hit is not None and (line, hit) not in seen:
            seen.add((line, hit))
            out.append(f"{rel_path}:{line}: imports {name} ({rule.why})")
    return out


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_finds_the_package() -> None:
    names = {module_name(p) for p in SOURCES}
    assert {"rstscope.core", "rstscope.codecs", "rstscope.decode", "rstscope.edge.producer",
            "rstscope.api.cli", "rstscope.kafka.roles", "rstscope.streams.topics"} <= names


@pytest.mark.parametrize("rule", RULES, ids=lambda r: "+".join(p.rpartition(".")[2] for p in r.packages))
def test_layer_rule(rule: Rule) -> None:
    bad = [v for path in SOURCES for v in check(rule, str(path.relative_to(ROOT)), path.read_text())]
    assert not bad, "forbidden imports:\n" + "\n".join(bad)


def test_checker_sees_imports_everywhere() -> None:
    """The checker itself: function-level, relative, ``from X import Y`` and import_module all count."""
    src = (
        "import os\n"
        "from rstscope import streams\n"
        "def f():\n"
        "    import faust\n"
        "    from ..kafka import security\n"
        "    import importlib; importlib.import_module('rstscope.edge.producer')\n"
        "from . import record\n"
    )
    got = imports(src, "rstscope.core.x", is_package=False)
    names = {n for _, n in got}
    assert {"rstscope.streams", "faust", "rstscope.kafka.security", "rstscope.edge.producer",
            "rstscope.core.record"} <= names
    assert (4, "faust") in got

    bad = check(RULES[0], "rstscope/core/x.py", src)
    assert len(bad) == 4, bad
    assert "rstscope/core/x.py:4: imports faust (" in "\n".join(bad)
    assert check(RULES[0], "rstscope/edge/x.py", src) == []  # another layer: another rule
