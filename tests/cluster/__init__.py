import glob
import os
import tempfile


def staging_dirs(prefix: str) -> set:
    """The workers' local staging directories (this machine's temp dir, shared by the loopback workers)."""
    return set(glob.glob(os.path.join(tempfile.gettempdir(), prefix + "*")))
