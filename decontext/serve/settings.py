"""The service's settings (no torch: the command line builds them before anything heavy loads)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

LOOPBACK_NAMES = ("localhost",)


@dataclass
class ServeSettings:
    protectors: tuple[str, ...] = ("toy-decontext",)  # the first is the default of a request
    model: str | None = None  # the editor (default: the one the first protector was trained against)
    family: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    max_eps: float | None = None  # 1/255 units; a request's eps is capped here (default: the protectors' own)
    max_batch: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 64
    timeout: float = 30.0  # seconds from a request's arrival to its answer, or 504
    max_upload_bytes: int = 20 * 1024 * 1024
    max_megapixels: float = 40.0
    measure_draws: int = 1  # the objective's measure before and after, per image (0: no measure in the record)
    allow_pgd: bool = True
    pgd_steps: int | None = None  # cap the fast preset's steps (None: the preset's own)
    seed: int = 0  # mixed into every upload's content seed
    keep: str | None = None  # a folder for each request's upload and answer (default: nothing written)
    api_key: str | None = None
    threads: int | None = None  # torch threads of the protecting worker
    batch_compute: bool = False  # a batch's photos in one protect() call (faster; equal bytes not guaranteed)

    def check(self) -> None:
        """ValueError naming the setting that cannot work."""
        if self.max_batch < 1 or self.max_queue < 1:
            raise ValueError(f"--max-batch and --max-queue must be >= 1 (got {self.max_batch}, {self.max_queue})")
        if self.max_wait_ms < 0 or self.timeout <= 0:
            raise ValueError(f"--max-wait-ms must be >= 0 and --timeout > 0 (got {self.max_wait_ms}, {self.timeout})")
        if self.max_upload_bytes < 1 or self.max_megapixels <= 0:
            raise ValueError("--max-upload-mb and --max-megapixels must be > 0")
        if self.max_eps is not None and not self.max_eps > 0:
            raise ValueError(f"--max-eps must be > 0, got {self.max_eps}")
        if self.measure_draws < 0:
            raise ValueError(f"--measure-draws must be >= 0, got {self.measure_draws}")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the service on this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere


def read_api_key(path: str) -> str:
    """The key in ``path`` (its first line, stripped); ValueError when missing, empty or too short."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"--api-key-file {path}: cannot read it ({exc.strerror or exc})") from None
    key = text.strip().splitlines()[0].strip() if text.strip() else ""
    if len(key) < 16:
        raise ValueError(f"--api-key-file {path}: the key must be at least 16 characters (found {len(key)})")
    return key
