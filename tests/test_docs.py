"""Every reference to a Markdown file names a file of this repository (issue 23: the design inside it).

Scanned: every text file git lists, tracked or untracked but not ignored (binary files skipped).
A reference is a path ending in ``.md`` (a bare name, ``docs/STYLE.md``, a Markdown link target
``[text](../docs/STYLE.md)``, optionally with ``#anchor``); one with a scheme (``https://...``) is
left alone. It resolves against the referencing file's directory, then against the repository
root, and must land on a file of the repository. Two more checks where a reference says more:
an ``#anchor`` must be the GitHub slug of a heading of the target, and a cited section
(``docs/SCIENCE.md, "Definitions"``) must be a heading of it.
"""
from __future__ import annotations

import functools
import posixpath
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A path-like token ending in .md, then an optional #anchor. ':' is allowed so that a URL stays one
# token (and is skipped); a token like `see:docs/...` keeps only what follows its last ':'.
_REF = re.compile(r"(?<![\w./~+:-])([\w./~+:-]*\w\.md)(?![\w])(#[\w-]*)?")
# A section cited right after the reference, as in `docs/STYLE.md, "Budgets we aim for"` (a comma
# is optional, and the quoted name may wrap to the next line).
_SECTION = re.compile(r"`?,?\s+\"([A-Za-z][^\"]{0,120})\"")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def repo_files(root: Path = ROOT) -> frozenset[str]:
    """Paths (posix, relative to ``root``) of the files git lists: tracked, or untracked and not ignored."""
    # safe.directory: a checkout owned by another user than the one running the tests (a CI's clone) is read too
    out = subprocess.run(["git", "-c", "safe.directory=*", "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], cwd=root, capture_output=True, check=True).stdout.decode()
    return frozenset(p for p in out.split("\0") if p and (root / p).is_file())


def read_text(path: Path) -> str | None:
    """The file's text, or None for a binary file (a NUL byte, or not UTF-8)."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.lru_cache(maxsize=None)
def headings(path: Path) -> tuple[str, ...]:
    text = read_text(path) or ""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)  # no headings inside code blocks
    return tuple(h.strip() for h in _HEADING.findall(text))


def resolve(ref: str, where: str, files: frozenset[str]) -> str | None:
    """The repository file that ``ref`` (in the file ``where``) names, or None."""
    for base in (posixpath.dirname(where), ""):
        candidate = posixpath.normpath(posixpath.join(base, ref))
        if candidate in files:
            return candidate
    return None


def problems_in(text: str, where: str, files: frozenset[str], root: Path = ROOT) -> list[str]:
    """``where:line: reference -- what is wrong`` for each bad Markdown reference in ``text``."""
    out = []
    for m in _REF.finditer(text):
        token, anchor = m.group(1), (m.group(2) or "")[1:]
        if "://" in token or token.startswith("~"):
            continue  # a URL, or a path in someone's home
        if text.startswith("](", m.end()):
            continue  # the text of a Markdown link: its target is the reference
        ref = token.rsplit(":", 1)[-1]
        line = text.count("\n", 0, m.start()) + 1
        found = resolve(ref, where, files)
        if found is None:
            out.append(f"{where}:{line}: {token} -- no such file in the repository")
            continue
        heads = headings(root / found)
        if anchor and anchor not in {slug(h) for h in heads}:
            out.append(f"{where}:{line}: {token}#{anchor} -- {found} has no heading with that anchor")
        section = _SECTION.match(text, m.end())
        if section and not anchor:
            name = " ".join(section.group(1).split())
            if name.lower() not in {h.lower() for h in heads}:
                out.append(f"{where}:{line}: {token}, \"{name}\" -- {found} has no such section")
    return out


def test_every_markdown_reference_names_a_file_of_the_repository():
    files = repo_files()
    assert "README.md" in files and "docs/SCIENCE.md" in files, sorted(files)[:20]
    bad = []
    for rel in sorted(files):
        text = read_text(ROOT / rel)
        if text is not None:
            bad += problems_in(text, rel, files)
    assert not bad, "references to Markdown files that are not in the repository:\n" + "\n".join(bad)


def test_the_check_reports_a_made_up_reference(tmp_path):
    files = repo_files()
    name = "NOPE"  # built here, so that this file holds no broken reference itself
    note = tmp_path / "note.txt"
    note.write_text(f"intro\nsee docs/{name}.md for more\n")
    assert problems_in(note.read_text(), "notes/note.txt", files) == [
        f"notes/note.txt:2: docs/{name}.md -- no such file in the repository"]


def test_the_check_resolves_links_and_checks_sections_and_anchors():
    files = repo_files()
    good = ('see docs/SCIENCE.md, "Definitions"; [layout](../docs/ARCHITECTURE.md#run-layout), '
            "[STYLE.md](../docs/STYLE.md), [pins](https://example.org/x/README.md) and README.md")
    assert problems_in(good, "infra/notes.txt", files) == []
    bad = f'docs/SCIENCE.md, "{"No Such"} Section" and docs/STYLE.md#{"no-such"}-anchor'
    found = problems_in(bad, "x.py", files)
    assert len(found) == 2 and "no such section" in found[0] and "no heading with that anchor" in found[1], found
