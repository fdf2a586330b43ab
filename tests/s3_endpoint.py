"""An S3 endpoint that tests talk to: the local Ceph RADOS Gateway, moto, or an external one."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCAL_S3 = REPO_ROOT / "infra" / "ceph" / "local-s3.sh"
CEPH_BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "monmaptool")


@dataclass(frozen=True)
class S3Endpoint:
    """Where an S3 store answers and how to sign in.

    ``state_dir`` is set only when this test session started the store (with
    ``infra/ceph/local-s3.sh``); it is None for moto and for an external endpoint.
    """

    endpoint_url: str
    key: str
    secret: str
    state_dir: Path | None = None

    @property
    def storage_options(self) -> dict[str, str]:
        """Keyword arguments for ``fsspec.filesystem("s3", ...)`` and ``fsspec.open``."""
        return {"endpoint_url": self.endpoint_url, "key": self.key, "secret": self.secret}

    def filesystem(self, **kwargs: Any):
        """A new (uncached) s3fs file system on this endpoint."""
        import fsspec

        return fsspec.filesystem("s3", skip_instance_cache=True, **self.storage_options, **kwargs)

    def restart_gateway(self, timeout: float = 120) -> None:
        """Stop and start the RADOS Gateway only (the data stays in the OSD)."""
        if self.state_dir is None:
            raise RuntimeError(
                f"cannot restart the gateway of {self.endpoint_url}: this test session did not "
                "start it (only a store started by the ceph_s3 fixture can be restarted)"
            )
        proc = subprocess.run(
            ["bash", str(LOCAL_S3), "restart-rgw", str(self.state_dir)],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"local-s3.sh restart-rgw failed:\n{proc.stderr}")
