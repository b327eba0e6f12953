"""The shape of the code DESIGN.md asks for, checked: no import circle among
the pack's modules, and no per-model branches in the attention hook (model
knowledge lives in integration/models/, one adapter per family)."""
import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("patterns", "kernels", "plans", "integration", "nodes", "parallel")


def module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def pack_imports(path: str) -> set[str]:
    """Modules of the pack a module imports, at module level or inside a
    function (a deferred import still makes a circle)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = module_name(path).rsplit(".", 1)[0] if not path.endswith("__init__.py") else module_name(path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")
            base = base[:len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if os.path.exists(os.path.join(ROOT, *candidate.split(".")) + ".py") else target)
    return found


def pack_modules() -> dict[str, str]:
    modules = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    modules[module_name(path)] = path
    return modules


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of the graph (module -> modules it imports), or None."""
    state: dict[str, int] = {}

    def visit(name, stack):
        state[name] = 1
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if not state.get(target):
                found = visit(target, stack + [target])
                if found:
                    return found
        state[name] = 2
        return None
    for name in sorted(graph):
        if not state.get(name):
            found = visit(name, [name])
            if found:
                return found
    return None


def test_no_import_circle():
    modules = pack_modules()
    graph = {name: {m for m in pack_imports(path) if m in modules and m != name}
             for name, path in modules.items()}
    assert len(graph) > 40 and graph["integration.install"], "the import graph was not read"
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_find_circle_finds_one():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


def test_the_hook_holds_no_per_model_branches():
    families = re.compile(r"\b(wan|hunyuan|mochi|cosmos|ltxv|cogvideo|kandinsky)\w*", re.IGNORECASE)
    for name in ("video_hook.py", "sparse_patch.py", "calibration_hook.py", "install.py"):
        source = open(os.path.join(ROOT, "integration", name), encoding="utf-8").read()
        code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("#"))
        code = re.sub(r'"""[\s\S]*?"""', "", code)  # docstrings may name models
        assert not families.search(code), f"integration/{name} branches on a model family: {families.search(code)[0]}"
