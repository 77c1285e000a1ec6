"""The shape of the code and its docs: the import graph, where Horovod may appear, the size of the
loop and of the README, and links that lead somewhere."""
import ast
import glob
import os
import re

import pytest

from helpers import REPO_ROOT

PACKAGE = os.path.join(REPO_ROOT, "hvd_cifar")
# Code that must run and be read without Horovod.
HOROVOD_FREE = ("model.py", "data/*.py", "checkpoint.py", "output.py", "train_dir.py",
                "files.py", "command.py", "processes.py", "classifier.py", "policy.py")


def module_name(path):
    relative = os.path.relpath(path, REPO_ROOT)[:-len(".py")].replace(os.sep, ".")
    return relative[:-len(".__init__")] if relative.endswith(".__init__") else relative


def imports_of(path):
    """The modules a file imports at any depth of its code (functions included)."""
    tree = ast.parse(open(path).read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            # `from hvd_cifar import plan` imports the module hvd_cifar.plan
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def package_graph():
    modules = {module_name(p): p for p in glob.glob(os.path.join(PACKAGE, "**", "*.py"),
                                                   recursive=True)}
    return {name: {m for m in imports_of(path) if m in modules and m != name}
            for name, path in modules.items()}


def test_no_module_imports_the_training_command():
    graph = package_graph()
    assert [name for name, imported in graph.items() if "hvd_cifar.train" in imported] == []
    for path in glob.glob(os.path.join(REPO_ROOT, "tools", "*.py")):
        assert "hvd_cifar.train" not in imports_of(path), path


def test_the_package_has_no_import_cycle():
    graph = package_graph()
    # A package imports its own submodules (its __init__ may name them): not a cycle.
    graph = {name: {m for m in imported if not m.startswith(name + ".")}
             for name, imported in graph.items()}
    state = {}

    def visit(name, path):
        state[name] = "open"
        for imported in sorted(graph[name]):
            if state.get(imported) == "open":
                cycle = path[path.index(imported):] + [imported]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if imported not in state:
                visit(imported, path + [imported])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def horovod_mentions(path):
    """The ways path reaches Horovod by itself: imports, and names of its modules in strings
    (a sys.modules["horovod.tensorflow"] lookup, importlib)."""
    tree = ast.parse(open(path).read(), path)
    imported = [m for m in imports_of(path) if m.split(".")[0] == "horovod"]
    named = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
             and isinstance(node.value, str) and re.fullmatch(r"horovod(\.\w+)*", node.value)]
    return imported + named


def reached(graph, start):
    """Every module of ours that start imports, at any depth."""
    seen, pending = set(), [start]
    while pending:
        for imported in graph[pending.pop()] - seen:
            seen.add(imported)
            pending.append(imported)
    return seen


@pytest.mark.parametrize("pattern", HOROVOD_FREE)
def test_the_core_modules_know_nothing_of_horovod(pattern):
    paths = glob.glob(os.path.join(PACKAGE, pattern))
    assert paths, pattern
    graph = package_graph()
    files = {module_name(p): p for p in glob.glob(os.path.join(PACKAGE, "**", "*.py"),
                                                  recursive=True)}
    for path in paths:
        assert horovod_mentions(path) == [], path
        # ...nor through a module of ours that does, however far down.
        for module in reached(graph, module_name(path)):
            assert horovod_mentions(files[module]) == [], (path, module)


def test_the_training_loop_marks_its_horovod_lines():
    source = open(os.path.join(PACKAGE, "train.py")).read()
    tree = ast.parse(source)
    lines = source.splitlines()
    unmarked = []
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt) and not isinstance(
                node, (ast.FunctionDef, ast.ClassDef, ast.If, ast.For, ast.While, ast.Try,
                       ast.With)):
            text = "\n".join(lines[node.lineno - 1:node.end_lineno])
            if re.search(r"\bhvd\.(?!elastic\.run)", text) or "fail_together(" in text:
                context = "\n".join(lines[max(0, node.lineno - 4):node.end_lineno])
                if "Horovod:" not in context:
                    unmarked.append(f"train.py:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert unmarked == []


def markdown_files():
    return [os.path.join(REPO_ROOT, "README.md")] + sorted(
        glob.glob(os.path.join(REPO_ROOT, "docs", "**", "*.md"), recursive=True))


def test_the_readme_is_short_and_opens_with_the_two_commands():
    readme = open(os.path.join(REPO_ROOT, "README.md")).read()
    assert len(readme.splitlines()) <= 150
    first_block = re.search(r"```sh\n(.*?)```", readme, re.S).group(1)
    assert [line.split()[:2] for line in first_block.splitlines()] == [["make", "train"],
                                                                       ["make", "test"]]


@pytest.mark.parametrize("path", markdown_files(),
                         ids=lambda p: os.path.relpath(p, REPO_ROOT))
def test_every_link_of_the_docs_leads_to_a_file(path):
    text = open(path).read()
    folder = os.path.dirname(path)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if not os.path.exists(os.path.normpath(os.path.join(folder, target.split("#")[0]))):
            broken.append(target)
    assert broken == []


def test_every_docs_page_is_reachable_from_the_readme():
    reached, pending = set(), [os.path.join(REPO_ROOT, "README.md")]
    while pending:
        page = pending.pop()
        if page in reached:
            continue
        reached.add(page)
        for target in re.findall(r"\]\(([^)\s#]+)", open(page).read()):
            linked = os.path.normpath(os.path.join(os.path.dirname(page), target))
            if linked.endswith(".md") and os.path.isfile(linked):
                pending.append(linked)
    pages = glob.glob(os.path.join(REPO_ROOT, "docs", "*.md"))
    assert sorted(set(pages) - reached) == []
