"""The layout docs/design.md promises, checked on the source: Optuna's private API in one
module, imports that only point down, a trainer that knows nothing of Optuna, a thin CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vae_search"
SOURCES = sorted(PACKAGE.glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _private_optuna_uses(path: Path) -> list[str]:
    """`x._name` on anything but self/cls, and imports from or of a private Optuna name."""
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = ast.unparse(node.value)
            # atexit._run_exitfuncs and os._exit: __main__'s quick exit (the standard library, not Optuna)
            if base not in ("self", "cls", "atexit", "os") and not base.startswith("torch"):
                found.append(f"{path.name}:{node.lineno} {base}.{node.attr}")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("optuna"):
            names = [node.module, *(a.name for a in node.names)]
            if any(part.startswith("_") for n in names for part in n.split(".")):
                found.append(f"{path.name}:{node.lineno} from {node.module} import ...")
    return found


@pytest.mark.parametrize("path", [p for p in SOURCES if p.name != "storages.py"], ids=lambda p: p.name)
def test_no_module_but_storages_touches_private_names(path):
    assert _private_optuna_uses(path) == []


def test_the_private_name_check_sees_what_storages_does():
    """The check above is not blind: storages.py, where the private API lives, trips it."""
    uses = _private_optuna_uses(PACKAGE / "storages.py")
    assert any("study._storage" in u for u in uses) and any("optuna.storages._rdb" in u for u in uses)


def _package_imports(path: Path) -> set[str]:
    """The vae_search modules a module imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.module == "vae_search":
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vae_search."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("vae_search.")}
    return out - {path.stem}


GRAPH = {p.stem: _package_imports(p) for p in PACKAGE.glob("*.py")}


def test_imports_only_point_down():
    """No cycle, so every module sits above what it imports (Python's own topological sort)."""
    from graphlib import CycleError, TopologicalSorter

    try:
        order = list(TopologicalSorter(GRAPH).static_order())
    except CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")
    assert order.index("cli") > order.index("run") > order.index("trial_loop") > order.index("study")


def test_only_the_cli_layer_imports_the_run_layer_and_nothing_imports_the_cli():
    assert {m for m, deps in GRAPH.items() if "cli" in deps} <= {"__main__"}
    assert {m for m, deps in GRAPH.items() if "run" in deps} <= {"cli"}
    # the reading commands and the servers sit beside the run layer: under the CLI, over the rest
    assert {m for m, deps in GRAPH.items() if "serve" in deps} <= {"cli"}
    assert {m for m, deps in GRAPH.items() if "reading" in deps} <= {"cli", "run"}


@pytest.mark.parametrize("module", ["train", "model", "data", "images"])
def test_training_knows_nothing_of_optuna(module):
    """The trainer is reusable without a study: no Optuna import, direct or through the package."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        tree = _tree(PACKAGE / f"{m}.py")
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {i for i in imported if i.split(".")[0] == "optuna"}, f"{m}.py imports optuna"
        todo += GRAPH[m]


def test_the_cli_stays_thin():
    assert len((PACKAGE / "cli.py").read_text().splitlines()) <= 450


READING = [("best",), ("best", "--json"), ("show",), ("fail-stale", "--older-than", "2h", "--dry-run")]


@pytest.mark.parametrize("args", READING, ids=" ".join)
def test_reading_commands_start_without_torch(tmp_path, args):
    """torch and torchvision (with the dynamo they import) took two thirds of `best`'s start,
    and scipy.stats (for Welch's test) most of the rest: the commands that only read a study
    import neither, on a grid with two seeds a point, where the verdicts test every pair."""
    import subprocess
    import sys

    from tests.samples import synthetic_grid

    storage = f"sqlite:///{tmp_path}/s.db"
    synthetic_grid(storage, {1: [1900.0, 1901.0], 2: [1880.0, 1882.0], 3: [1850.0, 1851.0], 4: [1870.0, 1872.0]})
    probe = ("import sys\nfrom vae_search.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
             "    assert e.code in (0, None), e.code\nprint(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('torch', 'torchvision') or m.startswith('scipy.stats')), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", probe, *args, "--storage", storage], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "[]", proc.stderr
