"""The named run configs of the ``collapse`` command: ``jobs/presets/<name>.yaml``.

``load_config(ref, overrides)`` is :func:`collapse.config_load.load_config` with preset names looked
up here: ``ref`` is a preset name (``demo``, ``tiny``, ``cifar10-paper``, ...; see ``list_presets()``)
or the path of a YAML file, whose ``base:`` may name a preset too. The presets are files of this
package (pyproject's package-data ships them); collapse/ never reads this folder itself.
"""
from __future__ import annotations

import pathlib

from collapse import config_load
from collapse.config import RunConfig

PRESETS_DIR = pathlib.Path(__file__).resolve().parent


def list_presets() -> list[str]:
    """The preset names, sorted: the stems of this folder's ``*.yaml`` files."""
    return config_load.list_presets(PRESETS_DIR)


def load_config(ref: str | None = None, overrides: list[str] | tuple = (), **kw) -> RunConfig:
    """A validated RunConfig: defaults < preset ``ref`` (or YAML file) and its bases < ``overrides``."""
    return config_load.load_config(ref, overrides, presets_dir=PRESETS_DIR, **kw)
