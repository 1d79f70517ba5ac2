"""Settings: one frozen object built from CLI args and environment, passed explicitly."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 7860
    workers: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    insecure_listen: bool = False
    max_upload_bytes: int = 200 * 1024 * 1024
    max_image_pixels: int = 64 * 1024 * 1024  # decompression-bomb guard
    max_archive_bytes: int = 2 * 1024 * 1024 * 1024  # uncompressed size cap for zip uploads
    heartbeat_s: float = 2.0
    stale_after_s: float = 20.0  # a running job with no heartbeat for this long is dead
    poll_s: float = 0.05  # huey consumer poll interval (submit->start latency)
    progress_per_s: float = 4.0
    model_cache_size: int = 2
    max_auto_retries: int = 1
    default_model: str = "embedded"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "studio.db"

    @property
    def queue_path(self) -> Path:
        return self.data_dir / "queue.db"

    @property
    def assets_dir(self) -> Path:
        return self.data_dir / "assets"

    @property
    def work_root(self) -> Path:
        return self.data_dir / "work"

    @property
    def previews_dir(self) -> Path:
        return self.data_dir / "previews"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    def with_(self, **kw: object) -> "Settings":
        return replace(self, **kw)

    def ensure_dirs(self) -> None:
        for d in (self.data_dir, self.assets_dir, self.work_root, self.previews_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)

    def check_bind(self) -> None:
        """Refuse a non-loopback bind until authentication exists, unless told otherwise."""
        if self.insecure_listen:
            return
        host = self.host
        if host == "localhost":
            return
        try:
            loop = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loop = False
        if not loop:
            raise SystemExit(
                f"refusing to listen on {host}: the Studio has no authentication yet; "
                "bind 127.0.0.1 or pass --insecure-listen if you really mean it"
            )


def default_data_dir() -> Path:
    return Path(_env("STUDIO_DATA_DIR", str(Path.home() / ".studio"))).expanduser()


def load(data_dir: str | Path | None = None, **overrides: object) -> Settings:
    """Build settings: explicit args win over STUDIO_* environment, which wins over defaults."""
    env_over: dict[str, object] = {}
    for key, cast in (("device", str), ("dtype", str), ("workers", int), ("max_upload_bytes", int),
                      ("stale_after_s", float), ("heartbeat_s", float), ("default_model", str)):
        raw = os.environ.get(f"STUDIO_{key.upper()}")
        if raw:
            env_over[key] = cast(raw)
    env_over.update({k: v for k, v in overrides.items() if v is not None})
    path = Path(data_dir).expanduser() if data_dir else default_data_dir()
    return Settings(data_dir=path.resolve(), **env_over)  # type: ignore[arg-type]
