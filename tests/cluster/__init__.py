import glob
import os


def staging_dirs(prefix: str) -> set:
    """The workers' local staging directories: in the spool of the workers of ``ray_local``, which the
    fixture gives to this test process and its Ray alone (tests/cluster/conftest.py)."""
    from collapse.data.storage import spool_dir
    return set(glob.glob(os.path.join(spool_dir(), prefix + "*")))
