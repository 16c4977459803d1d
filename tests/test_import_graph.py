"""The import graph of lensdask: every module stands on a floor and imports only its own floor or lower ones.

Floors, lowest first (a subpackage's ``__init__`` stands on its subpackage's floor):

0 base
    ``errors, config, names, deprecation, _version, codecs, checks, fanout, cluster, workersetup``, and the display
    stretch ``images`` (pictures of cutouts for people; pure numpy and matplotlib, read by the
    simulation and survey galleries, ``model.inject``'s figures and review).
1 data
    ``normalise`` (the models' pixel normalisation, which the quantised store applies to its codes),
    ``quantise, store, tilewriter, storeadmin``, the run directory ``rundir`` and the known-lens
    cross-match ``crossmatch`` (which the run directory's merge applies).
2 ``simulate.*``, and what a survey is: its profile ``survey.profiles`` and the DES tile layout it points
    at, ``survey.des_tiles`` (a simulation renders a survey's bands, pixels, instrument and conditions).
3 ``survey.*`` (a mock survey paints simulated lenses).
4 ``model.*`` (training draws simulated galaxies; ``inject`` paints arcs on ingested cutouts).
5 ``search.*``, and ``fit.*`` (lens models of a search run's candidates: the search's third stage).
6 ``review.*`` (a review round retrains and searches again).
7 ``demo``, ``cli`` and the package face ``lensdask/__init__.py``.

The test parses every module with :mod:`ast` (nothing is imported): imports at any depth count,
function-level lazy ones and ``TYPE_CHECKING`` blocks included, relative ones resolved.
``from P import n`` is an import of the module ``P.n`` when there is one, else of ``P``. Importing
``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``; those implicit imports are not counted
(a subpackage's face stands on its members' floor, and every module would otherwise import the
package face).

It asserts that no module imports one on a higher floor, that modules import each other in no
cycle, and that nothing imports the package face (the version lives in ``lensdask/_version.py``).
"""

from __future__ import annotations

import ast
import pathlib

import lensdask

ROOT = pathlib.Path(lensdask.__file__).parent
PACKAGE = "lensdask"

FLOORS = {
    "lensdask.errors": 0,
    "lensdask.config": 0,
    "lensdask.names": 0,
    "lensdask.deprecation": 0,
    "lensdask._version": 0,
    "lensdask.codecs": 0,
    "lensdask.checks": 0,
    "lensdask.fanout": 0,
    "lensdask.cluster": 0,
    "lensdask.workersetup": 0,
    "lensdask.images": 0,
    "lensdask.normalise": 1,
    "lensdask.quantise": 1,
    "lensdask.store": 1,
    "lensdask.tilewriter": 1,
    "lensdask.storeadmin": 1,
    "lensdask.rundir": 1,
    "lensdask.crossmatch": 1,
    "lensdask.simulate": 2,
    "lensdask.survey.profiles": 2,
    "lensdask.survey.des_tiles": 2,
    "lensdask.survey": 3,
    "lensdask.model": 4,
    "lensdask.search": 5,
    "lensdask.fit": 5,
    "lensdask.review": 6,
    "lensdask.demo": 7,
    "lensdask.cli": 7,
    "lensdask": 7,
}
"""A module's floor is that of its longest listed prefix (a subpackage's entry covers its modules)."""


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The lensdask modules ``name`` imports (itself excluded)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def floor(name: str) -> int:
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in FLOORS:
            return FLOORS[prefix]
    raise KeyError(name)


def test_every_module_has_a_floor():
    missing = [
        m
        for m in modules()
        if not any(m == k or m.startswith(k + ".") for k in FLOORS if k != PACKAGE) and m != PACKAGE
    ]
    assert not missing, f"give these modules a floor in FLOORS (tests/test_import_graph.py): {missing}"


def test_imports_resolve_to_modules():
    mods = set(modules())
    unknown = {f"{m} -> {t}" for m, targets in graph().items() for t in targets if t not in mods}
    assert not unknown, f"imports of lensdask names that are no module: {sorted(unknown)}"


def test_no_module_imports_a_higher_floor():
    upward = [
        f"{m} (floor {floor(m)}) -> {t} (floor {floor(t)})"
        for m, targets in sorted(graph().items())
        for t in sorted(targets)
        if floor(t) > floor(m)
    ]
    assert not upward, "imports up a floor:\n" + "\n".join(upward)


def test_nothing_imports_the_package_face():
    face = sorted(m for m, targets in graph().items() if PACKAGE in targets)
    assert not face, f"these modules import the package face lensdask/__init__.py: {face}"


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


LENSTRONOMY_WRAPPERS = {"lensdask.simulate.render", "lensdask.fit.lensmodel", "lensdask.fit.engine"}
"""The only modules that import lenstronomy: the simulation's renderer and the fit's lens models and engine."""


def test_only_the_wrappers_import_lenstronomy():
    importers = set()
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            if any(n.split(".")[0] == "lenstronomy" for n in names):
                importers.add(name)
    assert importers == LENSTRONOMY_WRAPPERS, f"lenstronomy is imported by {sorted(importers)}"


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    """The parser itself: a function-level relative import and a plain one are both edges."""
    src = tmp_path / "mod.py"
    src.write_text(
        "import os\nfrom .errors import LensdaskError\n\ndef f():\n    from .. import store\n"
        "    import lensdask.names\n"
    )
    found = imports("lensdask.search.mod", src, {"lensdask.store", "lensdask.names"})
    assert found == {"lensdask.search.errors", "lensdask.store", "lensdask.names"}
