"""The ``collapse`` command. Thin: parse, validate, call down; errors print as one clear line."""
from __future__ import annotations

import argparse
import os
import sys

from collapse.errors import CollapseError


def _storage_options(args) -> dict | None:
    # Credentials come from the standard AWS_* variables; only the endpoint may be given here.
    return {"endpoint_url": args.endpoint_url} if getattr(args, "endpoint_url", None) else None


def _absolute(args, *names: str) -> None:
    """Make the local paths among ``args.<names>`` absolute, once, here: workers run elsewhere."""
    from collapse.data.urls import absolute_url
    for name in names:
        value = getattr(args, name, None)
        if isinstance(value, list):
            setattr(args, name, [absolute_url(v) for v in value])
        elif value is not None:
            setattr(args, name, absolute_url(value))


def cmd_ingest(args) -> int:
    from collapse.data.importers import ingest
    from collapse.data.urls import absolute_source
    _absolute(args, "out")
    args.source = absolute_source(args.source)
    ingest(args.source, args.out, size=args.size, mode=args.mode, n=args.n, holdout=args.holdout, seed=args.seed,
           shard_size=args.shard_size, overwrite=args.overwrite, storage_options=_storage_options(args))
    return 0


def cmd_run(args) -> int:
    from jobs import run
    return run.main(args)


def cmd_score(args) -> int:
    from jobs import curate
    _absolute(args, "set", "reference", "out")
    return curate.score(args, _storage_options(args))


def cmd_select(args) -> int:
    from jobs import curate
    _absolute(args, "pool", "out")
    return curate.select(args, _storage_options(args))


def cmd_report(args) -> int:
    from jobs import report
    _absolute(args, "run_dirs", "out")
    return report.main(args, _storage_options(args))


def cmd_verify(args) -> int:
    from collapse.data.verify import verify
    _absolute(args, "url")
    v = verify(args.url, _storage_options(args))
    for f in v.findings:
        print(f.line())
    state = f"{len(v.findings)} damaged" if v.findings else "all match their manifests"
    print(f"verify {args.url}: {v.sets} committed sets, {v.parts} shards and files checked; {state}")
    if v.findings:
        print("`collapse run` on the run directory rebuilds what its stages wrote (re-samples a pool shard, "
              "re-copies a training set, retrains a model); a damaged real source must be restored from a copy")
    return 1 if v.findings else 0


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (exit 2) like every other failure of the command."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="collapse", description="Model collapse in the self-consuming loop of "
                                "diffusion models: measure it, and prevent it with entropy-based selection.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ing = sub.add_parser("ingest", help="import a real image source as sample sets <out>/train and <out>/holdout")
    ing.add_argument("source", help="fashion-mnist | digits | folder:PATH | npy:PATH | wds:URL | cifar10:PATH | "
                     "parquet:PATH; a path to an "
                     "existing directory or .npy/.npz file needs no prefix")
    ing.add_argument("--out", required=True, help="output URL (local path, file://, s3://, memory://, gs://)")
    ing.add_argument("--size", type=int, help="resize every image to SIZE x SIZE")
    ing.add_argument("--mode", choices=("grey", "rgb"), help="convert every image to grey or RGB")
    ing.add_argument("--n", type=int, help="a seeded subset of N training images")
    ing.add_argument("--holdout", type=int, default=0, help="held-out real images to split off (default 0)")
    ing.add_argument("--seed", type=int, default=0)
    ing.add_argument("--shard-size", type=int, default=1000, help="samples per tar shard (default 1000)")
    ing.add_argument("--overwrite", action="store_true", help="replace a different earlier import at --out")
    _add_endpoint_url(ing)
    ing.set_defaults(func=cmd_ingest)

    from jobs import curate, run
    r = sub.add_parser("run", help="run the self-consuming loop (resumes an existing run directory)")
    run.add_arguments(r)
    r.set_defaults(func=cmd_run)

    sc = sub.add_parser("score", help="entropy, novelty and quality figures of an image set")
    curate.add_score_arguments(sc)
    _add_endpoint_url(sc)
    sc.set_defaults(func=cmd_score)

    se = sub.add_parser("select", help="keep N images of a set by entropy-based selection, as a new set")
    curate.add_select_arguments(se)
    _add_endpoint_url(se)
    se.set_defaults(func=cmd_select)

    from jobs import report
    rp = sub.add_parser("report", help="render the HTML report of run directories (plots, samples, neighbours)")
    report.add_arguments(rp)
    rp.set_defaults(func=cmd_report)

    ve = sub.add_parser("verify", help="check a committed set, or every set of a run, against its manifests "
                        "(exit 1 when something is damaged)")
    ve.add_argument("url", help="a set or a run directory (local path or URL)")
    _add_endpoint_url(ve)
    ve.set_defaults(func=cmd_verify)
    return p


def _add_endpoint_url(parser) -> None:
    """The one spelling of the S3 endpoint option (its value reaches storage through _storage_options)."""
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CollapseError as e:
        print(f"collapse {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"collapse {args.command}: interrupted; nothing unfinished is visible as finished", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - never a traceback; COLLAPSE_DEBUG=1 shows it
        if os.environ.get("COLLAPSE_DEBUG"):
            raise
        line = _one_line(e)
        if "collapse.errors." in line.rsplit(" ... ", 1)[-1]:  # one of ours, raised in a worker or an actor
            print(f"collapse {args.command}: error: {line}", file=sys.stderr)
            return 2
        where = _origin(e)
        print(f"collapse {args.command}: error: {type(e).__name__}: {line}{where} "
              "(an unexpected failure: rerun with COLLAPSE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


def _one_line(e: BaseException) -> str:
    """The message of ``e`` on one line: a multi-line message (a config diff) joined by '; '; one
    that carries a remote traceback (a Ray task's or a Train worker's error) reduced to its last
    line, the error that the remote process raised."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if any(ln.startswith("Traceback (most recent call last)") for ln in lines):
        return f"{lines[0]} ... {lines[-1]}" if len(lines[0]) < 200 and lines[0] != lines[-1] else lines[-1]
    return "; ".join(lines).replace(":; ", ": ") if lines else type(e).__name__


def _origin(e: BaseException) -> str:
    """`` at file:line`` of the innermost frame of the traceback that is ours (collapse, cluster, jobs)."""
    tb, found = e.__traceback__, ""
    while tb is not None:
        path = tb.tb_frame.f_code.co_filename
        if any(f"/{pkg}/" in path for pkg in ("collapse", "cluster", "jobs")) and "site-packages" not in path:
            found = f" at {'/'.join(path.rsplit('/', 2)[-2:])}:{tb.tb_lineno}"
        tb = tb.tb_next
    return found


if __name__ == "__main__":
    sys.exit(main())
