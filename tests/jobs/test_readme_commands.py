"""Every `collapse` command that the documentation shows works when pasted into bash (issue 21).

The commands come from the fenced code blocks (```bash, ```sh, ```) of README.md and
infra/README.md, from their inline code spans that are whole commands (`make demo ARGS="..."`,
`collapse ...`) or `--set ...` fragments, and from the comments of jobs/presets/*.yaml
(`#   collapse run ...` lines and their code spans). Each logical line (backslash continuations
joined, as bash joins them) is split with shell rules (shlex); a `collapse` invocation is found at
the start of the line, after `ray job submit ... --`, as `.venv/bin/collapse`, or through a
Makefile target whose recipe runs collapse (`make demo ARGS="..."`: the recipe is read from the
Makefile and expanded as make would, then split again, since make hands it to bash).

Three checks per command:
- the words bash itself produces are exactly shlex's (shlex does no brace expansion, globbing or
  variable expansion: an unquoted `train-{000..049}.tar` is 50 words to bash, 1 to shlex);
- the CLI's real parser (jobs.cli.build_parser) accepts them;
- a `collapse run` also runs with --dry-run (the CLI's main, in this process) and prints its plan. A dry run reads
  no storage (collapse.plan.plan is pure, load_config only parses URLs), so an s3:// run directory
  or source stays as written: the environment holds an S3 endpoint on a closed loopback port and
  fake keys, so that any contact would fail rather than reach a real store. A local run directory
  is moved under the test's temporary directory, and must not exist after the dry run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from jobs.presets import PRESETS_DIR

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "infra/README.md")
FENCE_LANGS = ("", "bash", "sh", "shell")
PLACEHOLDER = re.compile(r"<[^>]*>|\.\.\.")           # `collapse verify <set or run>`, `ray job submit ...`
VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
SHELL_OPERATORS = {"|", "||", "&", "&&", ";", ">", ">>", "<", "2>", "2>&1"}


@dataclasses.dataclass(frozen=True)
class DocCommand:
    where: str          # "README.md:72"
    text: str           # the logical line as written, continuations joined (what bash reads)
    argv: tuple         # the arguments `collapse` receives (shell rules)
    shell_texts: tuple  # every text bash splits on the way: the line, and a make recipe after expansion
    fragment: bool = False  # a `--set ...` span of prose, checked as arguments of `collapse run`

    @property
    def runs(self) -> bool:
        return not self.fragment and self.argv[:1] == ("run",)


# -- extraction

def fences(text: str):
    """(line number, line, language or None outside a block) of every line but the fence lines."""
    inside, lang = False, ""
    for no, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s.startswith("```"):
            inside, lang = (not inside), s[3:].strip().lower()
            continue
        yield no, line, (lang if inside else None)


def fenced_lines(text: str):
    """(line number, line) of every line inside a ```bash / ```sh / ``` block."""
    return ((no, line) for no, line, lang in fences(text) if lang in FENCE_LANGS)


def logical_lines(numbered):
    """Backslash-newline joined as bash joins it (the backslash must be the line's last character)."""
    start, buf = None, ""
    for no, line in numbered:
        if start is None:
            start = no
        if line.endswith("\\"):
            buf += line[:-1]
            continue
        yield start, buf + line
        start, buf = None, ""
    if start is not None:
        yield start, buf


def inline_spans(text: str):
    """(line number, code) of the inline code spans outside fenced blocks; a span may wrap lines."""
    prose = "\n".join(ln if lang is None else "" for no, ln, lang in _all_lines(text))
    for m in re.finditer(r"`([^`]+)`", prose):
        yield prose.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split())


def _all_lines(text: str):
    """Every line, a fence line as inside a block (so that prose keeps its line numbers)."""
    body = {no: (line, lang) for no, line, lang in fences(text)}
    return ((no, *body.get(no, ("", "fence"))) for no in range(1, len(text.splitlines()) + 1))


def _is_collapse(word: str) -> bool:
    return os.path.basename(word) == "collapse"


def makefile():
    """({variable: value}, {target: [recipe lines]}) of the repository's Makefile."""
    variables, recipes, target = {}, {}, None
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("\t") and target:
            recipes[target].append(line.strip().lstrip("@"))
            continue
        target = None
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(?::=|\?=|=)\s*(.*)$", line)
        if m:
            variables.setdefault(m.group(1), m.group(2).strip())
            continue
        m = re.match(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", line)
        if m and not m.group(1).startswith("."):
            target = m.group(1)
            recipes[target] = []
    return variables, recipes


def make_expand(text: str, variables: dict) -> str:
    """``text`` expanded as make would on a machine without a GPU: $(shell ...) gives nothing here
    (the one shell call, nvidia-smi, finds no GPU), so $(if COND,THEN,ELSE) with an empty COND is ELSE."""
    def one(m):
        return make_expand(variables.get(m.group(1), ""), variables)
    text = re.sub(r"\$\(shell [^()]*\)", "", text)
    text = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, text)
    return re.sub(r"\$\(if ([^,()]*),([^,()]*),([^,()]*)\)", lambda m: m.group(2) if m.group(1).strip() else m.group(3),
                  text).replace("$$", "$")


def invocation(where: str, text: str) -> DocCommand | None:
    """The `collapse` invocation of one logical shell line, or None when it runs no collapse."""
    words = shlex.split(text, comments=True)
    if not words:
        return None
    if words[0] == "make":
        variables, recipes = makefile()
        overrides = dict(w.split("=", 1) for w in words[1:] if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", w))
        targets = [w for w in words[1:] if not w.startswith("-") and "=" not in w] or ["demo"]
        for target in targets:
            for line in recipes.get(target, []):
                recipe = make_expand(line, {**variables, **overrides})
                rwords = shlex.split(recipe, comments=True)
                if rwords and _is_collapse(rwords[0]):
                    return DocCommand(f"{where} (make {target})", text, tuple(rwords[1:]), (text, recipe))
        return None
    if words[0] == "--set":
        return DocCommand(where, text, ("run", *words), (text,), fragment=True)
    for i, w in enumerate(words):
        if _is_collapse(w) and (i == 0 or words[i - 1] == "--"):
            bad = SHELL_OPERATORS.intersection(words)
            assert not bad, f"{where}: shell operators {sorted(bad)} in {text!r}: this test does not split them"
            return DocCommand(where, text, tuple(words[i + 1:]), (text,))
    return None


def doc_commands() -> list[DocCommand]:
    found = []
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        for no, line in logical_lines(fenced_lines(text)):
            c = invocation(f"{doc}:{no}", line)
            if c:
                found.append(c)
        for no, span in inline_spans(text):
            first = span.split()[0]
            whole = first == "make" or _is_collapse(first)
            if (whole and len(span.split()) >= 3 or span.startswith("--set ")) and not PLACEHOLDER.search(span):
                c = invocation(f"{doc}:{no} (inline)", span)
                if c:
                    found.append(c)
    for preset in sorted(PRESETS_DIR.glob("*.yaml")):
        lines = preset.read_text().splitlines()
        rel = preset.relative_to(ROOT)
        comment = "\n".join(re.sub(r"^#\s?", "", ln) if ln.startswith("#") else "" for ln in lines)
        for no, ln in enumerate(lines, 1):
            m = re.match(r"^#\s+(?:[A-Za-z]+:\s+)?((?:\S*/)?collapse\s.*)$", ln)
            if m:
                c = invocation(f"{rel}:{no}", m.group(1))
                if c:
                    found.append(c)
        for m in re.finditer(r"`([^`]+)`", comment):
            span = " ".join(m.group(1).split())
            if span.startswith("--set ") and not PLACEHOLDER.search(span):
                found.append(invocation(f"{rel}:{comment.count(chr(10), 0, m.start()) + 1} (inline)", span))
    return found


COMMANDS = doc_commands()
IDS = [c.where for c in COMMANDS]


# -- the shell's own split

def bash_words(cmd: str, cwd: Path) -> list[str]:
    """The words bash makes of ``cmd`` (brace, tilde, variable, glob expansion and quote removal), as
    printf receives them. A glob that matches nothing is an error (failglob), as is an unset variable
    (set -u); a variable the line names is set to its own name (``$X`` stays ``$X``, as in shlex)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "LC_ALL": "C"}
    env.update({name: f"${name}" for name in VARIABLE.findall(cmd)})
    r = subprocess.run(["bash", "--noprofile", "--norc", "-c", 'shopt -s failglob; set -u; printf "%s\\0" ' + cmd],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"bash could not expand {cmd!r}: {r.stderr.strip()}"
    return r.stdout.split("\0")[:-1]


def parse(argv) -> tuple[object | None, str]:
    """(namespace, "") when the CLI's parser accepts ``argv``, else (None, its usage error)."""
    from jobs.cli import build_parser
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return build_parser().parse_args(list(argv)), ""
    except SystemExit as e:
        return None, f"exit {e.code}: {err.getvalue().strip()}"


def test_the_docs_show_the_commands_this_test_checks():
    wheres = " ".join(IDS)
    assert len(COMMANDS) >= 10, IDS
    for doc in DOCS:
        assert f"{doc}:" in wheres, f"no command found in {doc}: {IDS}"
    assert "(make demo)" in wheres and "jobs/presets/cifar10-paper.yaml:" in wheres, IDS
    cluster = [c for c in COMMANDS if c.where.startswith("README.md:") and "ray job submit" in c.text]
    assert len(cluster) >= 1 and all("--set" in c.argv for c in cluster), cluster
    assert any("train-{000000..000049}.tar" in " ".join(c.argv) for c in cluster), cluster  # the brace pattern


def test_no_continuation_backslash_is_followed_by_blanks():
    """``\\ `` at a line's end is an escaped space to bash, not a continuation: the command would end there."""
    for doc in DOCS:
        bad = [f"{doc}:{no}" for no, ln in fenced_lines((ROOT / doc).read_text()) if re.search(r"\\\s+$", ln)]
        assert not bad, bad


@pytest.mark.parametrize("cmd", COMMANDS, ids=IDS)
def test_bash_gives_the_program_the_words_the_docs_mean(cmd, tmp_path):
    for text in cmd.shell_texts:
        words, meant = bash_words(text, tmp_path), shlex.split(text, comments=True)
        assert words == meant, (
            f"{cmd.where}: pasted into bash, {text!r} gives {len(words)} words, not the {len(meant)} meant; "
            f"quote the argument (--set 'key=value'). Differing: "
            f"{[w for w in words if w not in meant][:3]} ... against {[w for w in meant if w not in words]}")


@pytest.mark.parametrize("cmd", COMMANDS, ids=IDS)
def test_the_cli_parser_accepts_the_command(cmd):
    args, error = parse(cmd.argv)
    assert args is not None, f"{cmd.where}: collapse {shlex.join(cmd.argv)}\n  -> {error}"


def test_the_old_unquoted_brace_pattern_is_caught(tmp_path):
    """The README's cluster command before issue 21: bash made 50 arguments of the brace pattern."""
    old = ("collapse run --config cifar10-paper --run-dir s3://bucket/runs/cifar10 "
           "--set data.source=wds:s3://bucket/cifar10/train-{000..049}.tar")
    words = bash_words(old, tmp_path)
    assert len(shlex.split(old)) == 8 and len(words) == 8 + 49
    args, error = parse(words[1:])
    assert args is None and "unrecognized arguments" in error, error
    with pytest.raises(AssertionError, match="gives 57 words, not the 8 meant"):
        test_bash_gives_the_program_the_words_the_docs_mean(invocation("old", old), tmp_path)
    assert bash_words(old.replace("--set data.source=", "--set 'data.source=") + "'", tmp_path) == shlex.split(old)


def _dry_run_argv(cmd: DocCommand, tmp: Path) -> tuple[list[str], Path | None]:
    argv, local_run_dir = list(cmd.argv), None
    for i, a in enumerate(argv[:-1]):
        if a == "--run-dir" and "://" not in argv[i + 1]:
            local_run_dir = tmp / "runs" / Path(argv[i + 1]).name
            argv[i + 1] = str(local_run_dir)
    return argv + ([] if "--dry-run" in argv else ["--dry-run"]), local_run_dir


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.runs], ids=[c.where for c in COMMANDS if c.runs])
def test_each_documented_run_prints_its_plan_with_dry_run(cmd, tmp_path, monkeypatch, capsys):
    """In this process (the CLI's own main, as `collapse` calls it): a dry run imports nothing that a
    subprocess would isolate, and the import of torch is paid once for all commands."""
    from jobs import cli
    argv, local_run_dir = _dry_run_argv(cmd, tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    # online, as the documented cluster is: DINOv2's hub id is then fetched by each featurizer (the
    # probe contacts nothing); tests of the features set HF_HUB_OFFLINE, under which it must be cached
    for k in [k for k in os.environ if k.startswith(("AWS_", "RAY_")) or k == "HF_HUB_OFFLINE"]:
        monkeypatch.delenv(k)
    for k, v in dict(AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_ACCESS_KEY_ID="none", AWS_SECRET_ACCESS_KEY="none",
                     AWS_EC2_METADATA_DISABLED="true").items():
        monkeypatch.setenv(k, v)
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    shown = f"{cmd.where}: collapse {shlex.join(argv)}\n{err.strip()}"
    assert rc == 0, shown
    assert re.search(r"^plan: \d+ stages under \S+", out, re.M) and "\ntotals: " in out, shown
    assert local_run_dir is None or not local_run_dir.exists(), f"{shown}\na dry run wrote {local_run_dir}"
    assert not any(cwd.iterdir()), f"{shown}\na dry run wrote {list(cwd.iterdir())}"


def test_make_demo_runs_the_gpu_preset_where_nvidia_smi_lists_a_gpu():
    """The GPU branch of `make demo` (no GPU here: nvidia-smi's answer is given as GPU=...)."""
    import subprocess
    run = lambda *a: subprocess.run(["make", "-n", "demo", *a], cwd=ROOT, capture_output=True, text=True,  # noqa: E731
                                    check=True).stdout
    gpu = run("GPU=GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-x)")
    assert "collapse run --config demo-gpu --run-dir runs/demo" in gpu and "a CUDA GPU (GPU 0: NVIDIA H100" in gpu
    cpu = run("GPU=")
    assert "collapse run --config demo --run-dir runs/demo" in cpu and "no CUDA GPU: the demo preset" in cpu
