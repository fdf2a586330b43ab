"""Optional imports that a library makes by itself, kept out of the processes that never use them.

Each of these costs every process that imports the library, at its start (docs/PLATFORM.md):
- diffusers imports transformers whenever it is installed (for its text-encoder pipelines and
  quantization configs, which no model of ours uses): ~1.1 s of each sampler actor, training worker
  and stage runner that loads a UNet;
- DeepSpeed's autotuner imports mlflow when it is installed: ~1 s of each training worker.
"""
from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def hidden(module: str):
    """``import module`` fails inside (ImportError, as if it were not installed), unless it was imported
    already; afterwards it imports as usual. For an optional import of a library that we do not use
    there."""
    if module in sys.modules:
        yield
        return
    sys.modules[module] = None
    try:
        yield
    finally:
        if sys.modules.get(module, 0) is None:
            del sys.modules[module]


@contextlib.contextmanager
def _diffusers_without_transformers():
    """Inside, diffusers' imports see no transformers, unless diffusers already counts on it.

    diffusers decides once, at its first import, whether transformers is there
    (``is_transformers_available()``, from ``importlib.util.find_spec``, which answers None for a hidden
    module), and its modules import it where it is (``diffusers.quantizers.pipe_quant_config`` in a
    try/except ImportError, whatever that answer was). Both are made here with transformers hidden."""
    if "diffusers" not in sys.modules:
        with hidden("transformers"):
            import diffusers.utils  # noqa: F401
    from diffusers.utils import is_transformers_available
    with contextlib.nullcontext() if is_transformers_available() else hidden("transformers"):
        yield


def from_diffusers(*names: str) -> tuple:
    """``diffusers.<name>`` for each name, imported without transformers: in a process that imports
    diffusers first from here, transformers stays out for diffusers' sake (our own imports of it, the
    DINOv2 features, work as usual). A process that imported diffusers or transformers before keeps
    what it has: hidden() leaves an imported module alone."""
    with _diffusers_without_transformers():
        import diffusers
        return tuple(getattr(diffusers, name) for name in names)
