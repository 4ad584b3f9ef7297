"""Imports point down only: cli -> compare/lab/demo/runs/summary -> tasks -> train (the engine), models -> nn;
data beside them; config/errors/viz/html at the bottom. Read from the source with `ast`, lazy imports
inside functions included, so a shortcut taken in a hurry fails here."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "archlab"
TOP = {"cli", "__main__", "compare", "demo", "runs", "summary", "lab"}

# package or module -> the archlab packages/modules it must never import
FORBIDDEN = {
    "nn": {"models", "train", "tasks", "data", "generate", "search", *TOP},
    "models": {"train", "tasks", "data", "generate", "search", *TOP},
    "train": {"tasks", "models", "nn", "data", "generate", "search", *TOP},
    "data": {"models", "train", "tasks", "nn", "generate", "search", *TOP},
    "generate": {"train", "tasks", "data", *TOP},
    "search": {"train", "tasks", "data", *TOP},
    "tasks": TOP,
    "config": {"nn", "models", "train", "tasks", "data", "viz", "html", *TOP},
    "errors": {"config", "nn", "models", "train", "tasks", "data", "viz", "html", *TOP},
    "viz": {"nn", "models", "train", "tasks", "data", *TOP},
    "html": {"nn", "models", "train", "tasks", "data", *TOP},
}


def archlab_imports(path: Path) -> set[str]:
    """The first component under archlab of every archlab module this file imports."""
    parts = path.relative_to(SRC.parent).with_suffix("").parts  # ("archlab", "train", "trainer")
    package = parts[:-1] if path.name != "__init__.py" else parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
                names = [module] if node.module else [f"{module}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            bits = name.split(".")
            if bits[0] == "archlab" and len(bits) > 1:
                found.add(bits[1])
    return found


def test_imports_point_down_only():
    violations = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        owner = rel.parts[0].removesuffix(".py")
        for target in archlab_imports(path) & FORBIDDEN.get(owner, set()):
            violations.append(f"{rel} imports archlab.{target}")
    assert not violations, "imports must point down:\n" + "\n".join(violations)


def test_the_checker_sees_relative_and_lazy_imports(tmp_path):
    nested = SRC / "train" / "trainer.py"
    assert "errors" in archlab_imports(nested)  # `from ..errors import ...` resolves to archlab.errors
    assert "viz" in archlab_imports(nested)  # imported lazily inside a method
    assert archlab_imports(SRC / "models" / "registry.py") >= {"config", "errors"}
