"""The package's modules import each other without a cycle, read statically from their source.

Every `import` statement counts, including the ones inside functions (those hide a cycle from
Python at import time, but a reader still has two modules that each need the other). A cycle is
printed as the chain of modules that closes it.
"""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("solar_ddpm_jax", "tfds_aia")


def module_files(repo: str = REPO) -> dict[str, str]:
  """{dotted module name: source path} of every module of PACKAGES."""
  modules = {}
  for package in PACKAGES:
    for folder, _, files in os.walk(os.path.join(repo, package)):
      for name in files:
        if not name.endswith(".py"):
          continue
        path = os.path.join(folder, name)
        parts = os.path.relpath(path, repo)[:-len(".py")].split(os.sep)
        if parts[-1] == "__init__":
          parts = parts[:-1]
        modules[".".join(parts)] = path
  return modules


def _resolve(module: str, name: str | None, modules: dict[str, str]) -> str | None:
  """The package module that `from module import name` (or `import module`) loads, if any."""
  if name and f"{module}.{name}" in modules:
    return f"{module}.{name}"
  while module and module not in modules:  # `import a.b.c` of a name inside a.b.
    module = module.rpartition(".")[0]
  return module or None


def import_graph(modules: dict[str, str]) -> dict[str, set[str]]:
  """{module: the package modules it imports anywhere in its source (functions included)}."""
  graph = {}
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    is_package = path.endswith("__init__.py")
    edges = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets = [_resolve(alias.name, None, modules) for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # Relative: from the module's package, `level` folders up.
          anchor = module.split(".") if is_package else module.split(".")[:-1]
          anchor = anchor[:len(anchor) - node.level + 1]
          base = ".".join(anchor + ([base] if base else []))
        targets = [_resolve(base, alias.name, modules) for alias in node.names]
      else:
        continue
      edges.update(t for t in targets if t and t != module)
    # A package's __init__ is loaded before its modules; importing it is no dependency on them.
    graph[module] = {t for t in edges if not module.startswith(t + ".")}
  return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One import cycle [a, b, ..., a] through each group of modules that import each other.

  A depth-first search in sorted order, so the same source gives the same report.
  """
  cycles, done, stack = [], set(), []

  def visit(module):
    stack.append(module)
    for target in sorted(graph.get(module, ())):
      if target in stack:
        cycles.append(stack[stack.index(target):] + [target])
      elif target not in done:
        visit(target)
    stack.pop()
    done.add(module)

  for root in sorted(graph):
    if root not in done:
      visit(root)
  # Keep one cycle per set of modules (the shortest), as a set of modules is one problem.
  by_members = {}
  for cycle in cycles:
    key = frozenset(cycle)
    if key not in by_members or len(cycle) < len(by_members[key]):
      by_members[key] = cycle
  return sorted(by_members.values())


def test_find_cycles_reports_each_chain():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": {"a"}}
  assert find_cycles(graph) == [["a", "b", "c", "a"], ["d", "e", "d"]]
  assert find_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_import_graph_reads_function_level_and_relative_imports(tmp_path):
  pkg = tmp_path / "solar_ddpm_jax"
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "a.py").write_text("def f():\n  from solar_ddpm_jax import b\n")
  (pkg / "b.py").write_text("from solar_ddpm_jax.sub import c\n")
  (pkg / "sub" / "__init__.py").write_text("")
  (pkg / "sub" / "c.py").write_text("from .. import a\nimport solar_ddpm_jax.b as b\n")
  graph = import_graph(module_files(str(tmp_path)))
  assert graph["solar_ddpm_jax.a"] == {"solar_ddpm_jax.b"}
  assert graph["solar_ddpm_jax.b"] == {"solar_ddpm_jax.sub.c"}
  assert graph["solar_ddpm_jax.sub.c"] == {"solar_ddpm_jax.a", "solar_ddpm_jax.b"}
  assert find_cycles(graph) == [
      ["solar_ddpm_jax.a", "solar_ddpm_jax.b", "solar_ddpm_jax.sub.c", "solar_ddpm_jax.a"],
      ["solar_ddpm_jax.b", "solar_ddpm_jax.sub.c", "solar_ddpm_jax.b"]]


def test_package_imports_have_no_cycle():
  modules = module_files()
  assert "solar_ddpm_jax.train" in modules and "tfds_aia" in modules
  cycles = find_cycles(import_graph(modules))
  assert not cycles, "Import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
