"""The distributed runtime on Ray. Actors are thin shells around ``collapse``.

Ray reads some settings when it is imported, so the loopback defaults of a local Ray are set
here, before any ``cluster`` module imports ray (only when no cluster address is given).
"""
import os as _os

def _loopback(address: str) -> bool:
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    return host.startswith("127.") or host in ("localhost", "[::1]")


# A driver that reaches a Ray on 127.0.0.1 without these hangs: Ray rewrites 127.0.0.1 to the
# machine's address. On a real cluster (a routable address) they must stay unset.
if not _os.environ.get("RAY_ADDRESS") or _loopback(_os.environ["RAY_ADDRESS"]):
    from cluster.runtime import LOCAL_RAY_ENV as _LOCAL

    for _k, _v in _LOCAL.items():
        _os.environ.setdefault(_k, _v)

# Ray merges the log lines of several workers that match once every word holding a digit is
# masked, so the progress lines of two trainings side by side ("train <run>/vanilla/gen-002/model:
# step ...", "train <run>/greedy/gen-002/model: step ...") were one pattern and one training's
# lines never reached the driver ("[repeated 2x across cluster]"). Read when ray is imported.
_os.environ.setdefault("RAY_DEDUP_LOGS", "0")

# Ray Train's controller reads its polling interval from the environment of the process that calls
# fit(): a stage runner actor (cluster.runtime.WORKER_ENV) or this driver (docs/PLATFORM.md).
from cluster.runtime import TRAIN_POLL_ENV as _POLL, TRAIN_POLL_S as _POLL_S  # noqa: E402

_os.environ.setdefault(_POLL, _POLL_S)
