"""``collapse run``: the self-consuming loop, locally or inside ``ray job submit``. Thin: parse, connect, call."""
from __future__ import annotations

import contextlib
import sys
import time


def add_arguments(p) -> None:
    p.add_argument("--config", default="demo", help="a preset name (jobs/presets/*.yaml) or a YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. run.generations=6 or strategies.greedy.pool_factor=5")
    p.add_argument("--run-dir", help="where the run lives: a local path or any fsspec URL (s3://, gs://, ...)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and the plan, run nothing")
    p.add_argument("--extend", action="store_true", help="allow a finished run to continue with more generations")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray on 127.0.0.1)")
    p.add_argument("--num-cpus", type=int, help="logical CPUs of a local Ray (default: the machine's, at least 4)")
    p.add_argument("--take-over", action="store_true",
                   help="run even if another driver's lease on the run directory is fresh (it must be gone)")
    p.add_argument("--plain", action="store_true",
                   help="plain progress lines every 30 s even in a terminal (default there: progress bars)")
    p.add_argument("--lease-ttl", type=_seconds, default=120.0, metavar="SECONDS",
                   help="a driver's lease is stale after this long without a heartbeat (default 120; beats every 1/4)")


def _seconds(v: str) -> float:
    import argparse
    try:
        s = float(v)
    except ValueError:
        s = -1.0
    if not s > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {v!r}")
    return s


@contextlib.contextmanager
def _progress(bars: bool):
    """The driver's say: print, or with ``bars`` a line above the progress bars of the run's board."""
    if not bars:
        yield print
        return
    from cluster.progress_board import Bars, open_board
    with Bars(open_board(), stream=sys.stdout) as drawn:
        yield drawn.write


def _print_extractors(cfg) -> int:
    """A line per feature extractor of the run: ok (and where its weights are) or the problem; a
    problem then raises the one-line ConfigError that the CLI prints (exit 2)."""
    from collapse.config_checks import run_extractor_report
    from collapse.errors import ConfigError
    report = run_extractor_report(cfg)
    print("\nfeature extractors (looked for where this driver runs):")
    for name, ok, text in report:
        print(f"  {name}: {'' if ok else 'MISSING: '}{text.removeprefix(name + ': ')}")
    problems = [text for _, ok, text in report if not ok]
    if problems:
        raise ConfigError(f"extractors: {'; '.join(problems)}")
    return 0


def main(args) -> int:
    from collapse import config
    from collapse.plan import format_plan, plan
    from jobs.presets import load_config
    # load_config makes run.run_dir absolute (Ray Train workers and actors run in other directories)
    overrides = list(args.overrides) + ([f"run.run_dir={args.run_dir}"] if args.run_dir else [])
    cfg = load_config(args.config, overrides)
    if args.dry_run:
        print(config.to_yaml(cfg))
        print(format_plan(plan(cfg)))
        return _print_extractors(cfg)
    import os

    from collapse.data import storage
    from collapse.data.lease import LEASE_SCHEMES, Lease
    root = plan(cfg).root
    # one driver per run directory: taken before Ray starts, so that a second driver is refused at once
    if storage.scheme_of(root) in LEASE_SCHEMES:
        lease = Lease(root, storage.storage_options_for(root), ttl_s=args.lease_ttl).acquire(args.take_over).start()
    else:
        lease = None
        print(f"warning: no run lease on {storage.scheme_of(root)}:// yet: nothing stops a second driver on {root}")
    try:
        if args.address:
            os.environ["RAY_ADDRESS"] = args.address  # before cluster/ imports ray (see cluster/__init__.py)
        from cluster.loop import Loop
        from collapse.report.table import summary_table
        from cluster.runtime import connect
        t0 = time.perf_counter()
        loop = Loop(cfg, lease=lease)
        # another config is refused, and a finished run found finished, before any Ray starts
        todo = loop.pending(extend=args.extend)
        if todo:
            connect(args.address, num_cpus=args.num_cpus or max(4, os.cpu_count() or 1))
        # a terminal gets progress bars (cluster.progress_board); a log or a pipe plain lines every 30 s
        with _progress(bars=bool(todo) and sys.stdout.isatty() and not args.plain) as say:
            loop.set_progress(say)
            rows = loop.run(extend=args.extend)
    finally:
        if lease is not None:
            lease.release()
    print(f"\nrun {loop.layout.root} finished in {time.perf_counter() - t0:.0f} s; metrics: {loop.layout.metrics_log}")
    for space in cfg.metrics.features:
        print(f"\nlast generation, {space} space:\n{summary_table(rows, space)}")
    return 0
