"""The layers' import rule: collapse/ never imports ray or deepspeed (nor jobs/ or cluster/);
cluster/ never imports jobs/. And imports go one way: every module of the three layers imports
alone, whichever is imported first, and collapse/'s module-level imports form no cycle."""
import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = {"collapse": {"ray", "deepspeed", "cluster", "jobs"}, "cluster": {"jobs"}}
LAYERS = ("collapse", "cluster", "jobs")


def _imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


def test_static_imports_respect_the_layers():
    bad = []
    for layer, forbidden in FORBIDDEN.items():
        files = sorted((ROOT / layer).rglob("*.py"))
        assert files, f"no python files under {layer}/"
        for f in files:
            bad += [f"{f.relative_to(ROOT)} imports {m}" for m in _imports(f) if m in forbidden]
    assert not bad, "\n".join(bad)


def test_importing_every_collapse_module_loads_no_ray_or_deepspeed():
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for p in (ROOT / "collapse").rglob("*.py"))
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'deepspeed')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_driver_and_a_stage_runner_check_and_plan_every_preset_without_diffusers():
    """The driver (jobs.run, cluster.loop) and each stage runner (cluster.runner, cluster.stages) read the
    UNet presets and the batch order's name (collapse.diffusion.presets); diffusers (with transformers
    and torch._dynamo, ~3 s per process) is imported where a model is built, not for those names."""
    code = ("import sys\n"
            "import jobs.run, cluster.loop, cluster.runner, cluster.stages\n"
            "from collapse.plan import plan\n"
            "from jobs.presets import list_presets, load_config\n"
            "stages = sum(len(plan(load_config(p, ['run.run_dir=/tmp/r'])).stages) for p in list_presets())\n"
            "print(stages, sorted({m.split('.')[0] for m in sys.modules} & {'diffusers', 'transformers', 'deepspeed'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    stages, loaded = out.stdout.split(" ", 1)
    assert int(stages) > 100 and loaded.strip() == "[]", out.stdout
    from collapse import diffusion   # the package still gives every name and module, from its modules
    assert set(diffusion._SUBMODULES) == {p.stem for p in (ROOT / "collapse" / "diffusion").glob("[!_]*.py")}
    assert all(getattr(diffusion, name) is not None for name in (*diffusion.__all__, *diffusion._SUBMODULES))
    assert diffusion.UNET_PRESETS is diffusion.models.UNET_PRESETS and callable(diffusion.build_unet)


def test_a_process_that_trains_and_samples_a_unet_loads_no_transformers_and_dinov2_still_loads(tmp_path):
    """A sampler actor's or a training worker's imports (collapse.imports.from_diffusers): the UNet is
    built, saved, loaded and sampled, with the learning-rate schedule a worker takes from diffusers,
    and transformers (~1.1 s of each such process, for nothing it uses) is not imported. In the same
    process DINOv2 then loads through transformers as usual, and diffusers' pipeline after it."""
    code = ("import sys\n"
            "from collapse import diffusion\n"
            "from collapse.imports import from_diffusers\n"
            "from tests.paper_data import random_dinov2_dir\n"
            "unet, sched = diffusion.build('tiny')\n"
            f"diffusion.save_model(unet, sched, {str(tmp_path / 'model')!r})\n"
            f"unet, sched = diffusion.load_model({str(tmp_path / 'model')!r})\n"
            "images = diffusion.sample(unet, sched, [1, 2], method='ddim', steps=2)\n"
            "warmup, = from_diffusers('get_cosine_schedule_with_warmup')\n"
            "print(images.shape, callable(warmup), 'transformers' in sys.modules)\n"
            f"d = random_dinov2_dir({str(tmp_path / 'dinov2')!r})\n"
            "from collapse.features import get_extractor\n"
            "f = get_extractor('dinov2', model_id=d)(images)\n"
            "from diffusers import DDPMPipeline\n"
            f"pipe = DDPMPipeline.from_pretrained({str(tmp_path / 'model')!r})\n"
            "print(f.shape, type(pipe.unet).__name__, 'transformers' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    first, then = out.stdout.strip().splitlines()[-2:]
    assert first.endswith("True False") and first.startswith("(2, "), out.stdout
    assert then == "(2, 32) UNet2DModel True", out.stdout


def test_the_rule_catches_a_violation(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import ray.train\nfrom deepspeed import ops\n")
    assert list(_imports(f)) == ["ray", "deepspeed"]


# -- every module imports alone

def _modules(*layers: str) -> list[str]:
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                  for layer in layers for p in (ROOT / layer).rglob("*.py"))


def _import_alone(module: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("module", ["collapse.config_checks", "collapse.config", "collapse.config_load",
                                    "jobs.presets"])
def test_each_config_module_imports_first_in_a_fresh_interpreter(module):
    """collapse.config_checks first (it and collapse.config once imported each other), and the rest of
    the config modules, each as the first import of a new interpreter."""
    out = _import_alone(module)
    assert out.returncode == 0, out.stderr[-3000:]


# One interpreter imports every module once (so torch, ray, ... are loaded once), then forks a child per
# module that forgets every module of the three layers and imports that one: to our code, each child is
# a fresh interpreter, and the 77 imports take seconds instead of minutes of torch and ray imports.
_FORKED_IMPORTS = """
import importlib, os, sys, traceback
modules, layers = {modules!r}, {layers!r}
for m in modules:
    try:
        importlib.import_module(m)
    except BaseException:
        pass          # the child that imports it alone says why
ours = [m for m in sys.modules if m.split(".")[0] in layers]
failed = []
for m in modules:
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            for name in ours:
                sys.modules.pop(name, None)
            importlib.import_module(m)
        except BaseException:
            print(f"--- import {{m}} alone:", file=sys.stderr)
            traceback.print_exc()
            code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    if os.waitpid(pid, 0)[1]:
        failed.append(m)
print(failed)
"""


def test_every_module_imports_alone():
    modules = _modules(*LAYERS)
    assert {"collapse.config_checks", "cluster.loop", "jobs.presets"} <= set(modules)
    out = subprocess.run([sys.executable, "-c", _FORKED_IMPORTS.format(modules=modules, layers=LAYERS)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == ["[]"], \
        f"modules that fail to import alone: {out.stdout.strip()}\n{out.stderr[-5000:]}"


# -- no import cycle in collapse/ (module-level imports, read with ast)

def _module_level_imports(tree: ast.Module):
    """The import statements run when the module is imported: at its top level and in its class
    bodies and if/try/with blocks, not in functions (lazy imports) or under ``if TYPE_CHECKING``."""
    todo = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.ClassDef, ast.For, ast.While)) or \
                type(node).__name__ == "TryStar":
            todo.extend(child for field in ("body", "orelse", "handlers", "finalbody")
                        for child in getattr(node, field, []))
        elif isinstance(node, ast.ExceptHandler):
            todo.extend(node.body)


def import_graph(package_dir: pathlib.Path, lazy: bool = False) -> dict[str, set[str]]:
    """{module: the modules of the same package it imports at import time}. ``from X import name``
    counts as X.name where that is a module (the package X need not have finished), else as X;
    ``import a.b.c`` as a.b.c (its parent packages are imported first, never in a cycle with it).
    ``lazy``: count the imports inside functions too (a cycle through them is still two modules that
    need each other)."""
    top = package_dir.name
    names = {".".join(p.relative_to(package_dir.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in sorted(package_dir.rglob("*.py"))}
    graph = {}
    for name, path in names.items():
        is_package = path.name == "__init__.py"
        edges = set()
        tree = ast.parse(path.read_text(), filename=str(path))
        nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))] if lazy \
            else _module_level_imports(tree)
        for node in nodes:
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parent = name.split(".")[:len(name.split(".")) - node.level + is_package]
                    base = ".".join(parent + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in names else base for a in node.names]
            for t in targets:
                while t and t not in names:
                    t = t.rpartition(".")[0]      # import a.b.attr: the module a.b
                if t and t.split(".")[0] == top and t != name:
                    edges.add(t)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle ``[a, b, ..., a]`` of the graph, or None."""
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state and (cycle := visit(m)):
                return cycle
        stack.pop()
        state[n] = "done"
        return None

    for n in sorted(graph):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


@pytest.mark.parametrize("layer", ["collapse", "cluster"])
def test_imports_form_no_cycle_even_through_lazy_imports(layer):
    """Before, collapse.config imported collapse.config_checks inside load_config, and cluster.runner
    imported cluster.loop inside its actor: lazy imports that hid a circle. Now none, lazy or not."""
    cycle = find_cycle(import_graph(ROOT / layer, lazy=True))
    assert cycle is None, f"import cycle in {layer}/: " + " -> ".join(cycle)
    if layer == "cluster":
        assert "cluster.loop" not in import_graph(ROOT / layer, lazy=True)["cluster.runner"]


def test_collapse_imports_form_no_cycle():
    graph = import_graph(ROOT / "collapse")
    assert {"collapse.config", "collapse.config_checks", "collapse.config_load"} <= set(graph)
    assert "collapse.config_checks" not in graph["collapse.config"]
    assert {"collapse.config", "collapse.config_checks"} <= graph["collapse.config_load"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in collapse/: " + " -> ".join(cycle)


def test_the_cycle_check_catches_a_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.c import C\n")
    (pkg / "a.py").write_text("from pkg.b import helper\n\ndef f():\n    from pkg import c  # lazy: no edge\n")
    (pkg / "b.py").write_text("import os\ntry:\n    from . import a\nexcept ImportError:\n    a = None\nhelper = 1\n")
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n"
                                     "from ..b import helper\nC = helper\n")
    graph = import_graph(pkg)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.sub": {"pkg.sub.c"},
                     "pkg.sub.c": {"pkg.b"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    assert import_graph(pkg, lazy=True)["pkg.a"] == {"pkg", "pkg.b"}   # and the lazy import, when asked for
    (pkg / "b.py").write_text("helper = 1\n")
    assert find_cycle(import_graph(pkg)) is None
