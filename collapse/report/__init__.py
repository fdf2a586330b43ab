"""The report of a run: plots, sample grids and nearest-neighbour evidence, from the run directory alone.

``render_report(run_dirs, out_url=None, storage_options=None) -> index URL`` (collapse.report.render).
"""
from collapse.report.render import render_report

__all__ = ["render_report"]
