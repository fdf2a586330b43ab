"""The distributed runtime on Ray. Actors are thin shells around ``collapse``.

Ray reads some settings when it is imported, so the loopback defaults of a local Ray are set
here, before any ``cluster`` module imports ray (only when no cluster address is given).
"""
import os as _os

if not _os.environ.get("RAY_ADDRESS"):
    from cluster.runtime import LOCAL_RAY_ENV as _LOCAL

    for _k, _v in _LOCAL.items():
        _os.environ.setdefault(_k, _v)
