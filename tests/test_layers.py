"""Dependencies point one way: every import in the package (top level, inside functions, type-only alike) is
read from the source and checked against the layers, lowest first:

    runtime, media, segment, model (with the decode-engine interface), engines, chat, serve,
    then cli / batch / eval / report, and app.py on top.

A module may import its own layer and the ones below it, never one above: a new engine, say, never means
editing the model or the warm-up.
"""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import REPO

PACKAGE = REPO / "pixelrefer"
LAYERS = ["runtime", "media", "segment", "model", "engines", "chat", "serve", "cli|batch|eval|report"]
TOP = len(LAYERS) - 1
"""The package's own `__init__` / `__main__` sit with the commands, app.py above everything."""


def layer_of(module: str) -> int:
    """The layer of `pixelrefer.<part>...`."""
    parts = module.split(".")
    if len(parts) == 1:
        return TOP
    for index, names in enumerate(LAYERS):
        if parts[1] in names.split("|") or parts[1] == "__main__":
            return index if parts[1] != "__main__" else TOP
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS")


def module_name(path: Path) -> str:
    relative = path.relative_to(REPO).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) for every import of the package in `path` (or `source`, read as if it were
    there), relative ones resolved, in the order they appear."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    nodes = sorted(
        (n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)), key=lambda n: n.lineno
    )
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                # `from . import x` names a module x of that package.
                targets = [f"{target}.{alias.name}" for alias in node.names] if not node.module else [target]
            else:
                targets = [node.module or ""]
            found += [(node.lineno, target) for target in targets]
    return [
        (line, target) for line, target in found if target == "pixelrefer" or target.startswith("pixelrefer.")
    ]


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_package_is_in_a_layer() -> None:
    for path in sources():
        layer_of(module_name(path))


def test_no_package_imports_one_above_it() -> None:
    upward = []
    for path in sources():
        own = layer_of(module_name(path))
        for line, target in imports(path):
            if layer_of(target) > own:
                upward.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


def test_the_model_never_imports_an_engine() -> None:
    offending = [
        f"{path.relative_to(REPO)}:{line} imports {target}"
        for path in sorted((PACKAGE / "model").rglob("*.py"))
        for line, target in imports(path)
        if target.startswith("pixelrefer.engines")
    ]
    assert not offending, offending


def test_the_walk_sees_every_kind_of_import() -> None:
    """The checker itself: absolute, relative, function-level and type-only imports are all found."""
    source = (
        "from typing import TYPE_CHECKING\nimport pixelrefer.runtime.errors\nfrom ..chat import session\n"
        "from . import cache\nif TYPE_CHECKING:\n    from ..serve.service import Service\n"
        "def late():\n    from ..engines import build_engine\n"
    )
    found = [target for _, target in imports(PACKAGE / "model" / "probe.py", source)]
    assert found == [
        "pixelrefer.runtime.errors", "pixelrefer.chat", "pixelrefer.model.cache", "pixelrefer.serve.service",
        "pixelrefer.engines",
    ]  # fmt: skip
    assert [layer_of(target) for target in found] == [0, 5, 3, 6, 4]
