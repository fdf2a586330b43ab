"""Bad input, as a table: every row exits 2 with one line that names the input and what was expected,
no traceback, and nothing written that looks finished (no manifest, score, report or run config)."""
import os
import shutil

import numpy as np
import pytest

from jobs.cli import main

FINISHED = ("manifest.json", "score.json", "index.html", "config.yaml", "lease.json")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace: good and damaged sets, malformed sources and config files."""
    from collapse.data.importers import ingest
    w = tmp_path_factory.mktemp("bad-input")
    quiet = dict(progress=lambda *_: None)
    ingest("digits", str(w / "good"), n=80, holdout=20, **quiet)
    ingest("fashion-mnist", str(w / "fm"), n=30, size=16, **quiet)
    np.savez(w / "nokey.npz", pics=np.zeros((4, 8, 8), np.uint8))
    np.save(w / "flat.npy", np.zeros(10, np.uint8))
    np.save(w / "fivech.npy", np.zeros((4, 8, 8, 5), np.uint8))
    (w / "emptydir").mkdir()
    (w / "txtdir").mkdir()
    (w / "txtdir" / "a.txt").write_text("not an image")
    (w / "broken.yaml").write_text("run: {name: x\n  seed: [\n")
    (w / "unknown.yaml").write_text("run:\n  name: x\nbogus:\n  a: 1\n")
    (w / "notmap.yaml").write_text("- 1\n- 2\n")
    (w / "bad.tar").write_bytes(b"not a tar at all" * 10)
    shutil.copytree(w / "good", w / "damaged")
    shard = w / "damaged" / "train" / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0x01
    shard.write_bytes(bytes(data))
    return w


W = "{w}"
CASES = [  # (argv, words the one line must hold)
    # ingest
    ("ingest no-such-thing --out {w}/o", ["no-such-thing", "expected fashion-mnist, digits"]),
    ("ingest folder:{w}/missing --out {w}/o", ["{w}/missing", "does not exist"]),
    ("ingest {w}/nokey.npz --out {w}/o", ["nokey.npz", "'images'", "['pics']"]),
    ("ingest {w}/flat.npy --out {w}/o", ["flat.npy", "(N, H, W)", "(10,)"]),
    ("ingest {w}/fivech.npy --out {w}/o", ["fivech.npy", "(N, H, W, 3)", "(4, 8, 8, 5)"]),
    ("ingest digits --out {w}/o --size 0", ["size", "positive", "0"]),
    ("ingest digits --out {w}/o --n 5000", ["n=5000", "1797"]),
    ("ingest digits --out {w}/o --holdout 5000", ["holdout=5000", "1797"]),
    ("ingest digits --out foo://o", ["foo", "expected one of file"]),
    ("ingest digits --out s3://bucket/o --endpoint-url http://127.0.0.1:9", ["s3://bucket/o",
                                                                             "cannot reach the storage endpoint"]),
    ("ingest {w}/emptydir --out {w}/o", ["{w}/emptydir", "holds no image files"]),
    ("ingest {w}/txtdir --out {w}/o", ["{w}/txtdir", "holds no image files"]),
    ("ingest wds:{w}/bad.tar --out {w}/o", ["bad.tar", "not a readable tar shard"]),
    ("ingest digits --out {w}/o --shard-size 0", ["shard size 0", "at least 1"]),
    # score
    ("score {w}/missing-set", ["{w}/missing-set", "not finished"]),
    ("score {w}/damaged/train", ["shard-000000.tar", "damaged", "sha256"]),
    ("score {w}/good/train --reference {w}/fm/train", ["{w}/fm/train", "(16, 16)", "(8, 8)", "same image size"]),
    ("score {w}/good/train --features nope", ["'nope'", "pixel"]),
    # select
    ("select {w}/good/train --n 500 --strategy greedy --out {w}/s", ["--n 500", "80 images"]),
    ("select {w}/good/train --n 0 --strategy greedy --out {w}/s", ["--n 0", "at least 1"]),
    ("select {w}/good/train --n 10 --strategy tdf --out {w}/s", ["--strategy tdf", "--tau0"]),
    ("select {w}/good/train --n 10 --strategy nope --out {w}/s", ["--strategy", "'nope'", "greedy"]),
    ("select {w}/damaged/train --n 10 --strategy greedy --out {w}/s", ["shard-000000.tar", "damaged"]),
    # report
    ("report {w}/emptydir", ["{w}/emptydir", "holds no run"]),
    ("report {w}/missing-run", ["{w}/missing-run", "does not exist"]),
    # run and config files
    ("run --config {w}/broken.yaml --dry-run", ["broken.yaml", "not valid YAML"]),
    ("run --config {w}/unknown.yaml --dry-run", ["bogus", "unknown key", "allowed: run, data"]),
    ("run --config {w}/notmap.yaml --dry-run", ["notmap.yaml", "expected a mapping", "list"]),
    ("run --config no-such-preset --dry-run", ["no-such-preset", "known presets", "tiny"]),
    ("run --config tiny --dry-run --set train.steps=abc", ["train.steps", "expected an int", "'abc'"]),
    ("run --config tiny --dry-run --set train.lr=-1", ["train.lr", "-1.0", "(0, inf)"]),
    ("run --config tiny --dry-run --set strategies.greedy.kind=nope", ["strategies.greedy.kind", "'nope'", "tdf"]),
    ("run --config tiny --dry-run --set train.steps", ["train.steps", "expected KEY=VALUE"]),
    ("run --config tiny --dry-run --set data.size=7", ["data.size", "7", "tiny", "16"]),
    ("run --config tiny --dry-run --set metrics.features=[nope]", ["metrics.features", "'nope'", "pixel"]),
    ("run --config tiny --run-dir foo://x", ["run.run_dir", "foo://x", "s3://"]),
    ("run --config tiny --lease-ttl 0", ["--lease-ttl", "positive number of seconds", "'0'"]),
]


def _files(root) -> set:
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs}


@pytest.mark.parametrize("argv,words", CASES, ids=[c[0].replace("{w}/", "")[:60] for c in CASES])
def test_bad_input_is_one_clear_line_and_nothing_finished(ws, argv, words, capsys, monkeypatch):
    monkeypatch.chdir(ws)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")  # so that the endpoint, not the credentials, is what fails
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    before = _files(ws)
    try:
        code = main([a.replace(W, str(ws)) for a in argv.split(" ")])
    except SystemExit as e:  # argparse's own exit, also one line
        code = e.code
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == 2, out.err + out.out
    assert len(lines) == 1 and "Traceback" not in out.err and "unexpected failure" not in out.err, out.err
    for word in words:
        assert word.replace(W, str(ws)) in lines[0], (word, lines[0])
    new = _files(ws) - before
    assert not [p for p in new if os.path.basename(p) in FINISHED], new


def test_the_table_covers_every_command_with_enough_rows():
    commands = {c[0].split(" ")[0] for c in CASES}
    assert commands == {"ingest", "score", "select", "report", "run"} and len(CASES) >= 25
