"""The layers' import rule: collapse/ never imports ray or deepspeed (nor jobs/ or cluster/);
cluster/ never imports jobs/."""
import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = {"collapse": {"ray", "deepspeed", "cluster", "jobs"}, "cluster": {"jobs"}}


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


def test_the_rule_catches_a_violation(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import ray.train\nfrom deepspeed import ops\n")
    assert list(_imports(f)) == ["ray", "deepspeed"]
