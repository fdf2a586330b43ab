"""``collapse report``: render the HTML report of one or more run directories. Thin: parse, call."""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories (local paths or fsspec URLs: s3://, gs://, ...); several are overlaid")
    p.add_argument("--out", help="where to write index.html and its PNGs (default: <first RUN_DIR>/report)")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")


def main(args, storage_options: dict | None = None) -> int:
    from collapse.report import render_report
    print(render_report(args.run_dirs, args.out, storage_options))
    return 0
