"""Host and storage bandwidths that price reloading weights from storage (shipped H100 measurements)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources

from oserve.common.errors import ConfigError


@dataclass(frozen=True)
class IoProfile:
    """GB/s of the paths a reload takes: disk -> host memory -> GPU."""

    disk_read_gbps: float = 1.87
    h2d_gbps: float = 55.3

    @staticmethod
    def h100() -> IoProfile:
        text = resources.files("oserve.data").joinpath("h100_io_profile.csv").read_text()
        rows = csv.DictReader(io.StringIO("".join(ln for ln in text.splitlines(True)
                                                  if not ln.startswith("#"))))
        values = {r["what"]: float(r["gbps"]) for r in rows}
        try:
            return IoProfile(values["disk_read_direct"], values["h2d_pinned"])
        except KeyError as exc:
            raise ConfigError(f"h100_io_profile.csv lacks row {exc}") from None
