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
    auth: str = "auto"  # auto (on unless loopback-only) | on | off (loopback only)
    public_urls: tuple[str, ...] = ()  # e.g. https://studio.example.com behind a reverse proxy
    allowed_hosts: tuple[str, ...] = ()  # extra Host names to serve (besides loopback and public URLs)
    share: bool = False  # gradio's share tunnel
    share_server_address: str = ""  # self-hosted share server host:port
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")  # whose X-Forwarded-For is believed (with a public URL)
    model_dirs: tuple[str, ...] = ()  # folders web clients may name models in (besides data_dir/models)
    max_upload_bytes: int = 200 * 1024 * 1024
    max_json_bytes: int = 1024 * 1024  # any request body that is not a file upload
    max_image_pixels: int = 64 * 1024 * 1024  # decompression-bomb guard
    max_archive_bytes: int = 2 * 1024 * 1024 * 1024  # uncompressed size cap for zip uploads
    heartbeat_s: float = 2.0
    stale_after_s: float = 20.0  # a running job with no heartbeat for this long is dead
    poll_s: float = 0.05  # huey consumer poll interval (submit->start latency)
    progress_per_s: float = 4.0
    model_cache_mb: int = 0  # loaded models per worker, in MB; 0 = sized to the machine (40 % RAM / 80 % GPU)
    adapter_cache_mb: int = 1024  # adapters kept loaded per cached pipeline
    max_auto_retries: int = 1
    default_model: str = "embedded"
    # scale-out (docs/deployment.md); empty = the single-machine default inside data_dir
    database_url: str = ""  # STUDIO_DATABASE_URL, e.g. postgresql+psycopg://user@db/studio
    queue_url: str = ""  # STUDIO_QUEUE_URL, e.g. redis://queue:6379/0 (huey's PriorityRedisHuey)
    assets_root: str = ""  # STUDIO_ASSETS_DIR: a shared content-addressed asset root
    engines: tuple[str, ...] = ()  # engines this worker runs (studio worker --engines); () = all
    lease_s: float = 0.0  # a claimed job's lease; 0 = stale_after_s. Renewed by every heartbeat
    claim_poll_s: float = 1.0  # an idle worker looks for claimable jobs this often (lost wake-ups)
    recover_every_s: float = 10.0  # how often each worker runs the recovery pass
    worker_host: str = ""  # the host name a worker registers under (default: this machine's)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def lease_seconds(self) -> float:
        return self.lease_s or self.stale_after_s

    @property
    def db_url(self) -> str:
        """The SQLAlchemy URL: STUDIO_DATABASE_URL, else the SQLite file in the data dir."""
        return self.database_url or f"sqlite:///{self.db_path}"

    @property
    def shared(self) -> bool:
        """True when jobs may run on other machines (a database server rather than a file)."""
        return not self.db_url.startswith("sqlite")

    @property
    def adapter_cache_bytes(self) -> int:
        return self.adapter_cache_mb << 20

    @property
    def db_path(self) -> Path:
        return self.data_dir / "studio.db"

    @property
    def queue_path(self) -> Path:
        return self.data_dir / "queue.db"

    @property
    def assets_dir(self) -> Path:
        return Path(self.assets_root).expanduser() if self.assets_root else self.data_dir / "assets"

    @property
    def work_root(self) -> Path:
        return self.data_dir / "work"

    @property
    def previews_dir(self) -> Path:
        return self.data_dir / "previews"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def model_roots(self) -> tuple[Path, ...]:
        return (self.models_dir, *(Path(d).expanduser() for d in self.model_dirs))

    @property
    def loopback_only(self) -> bool:
        return _is_loopback_name(self.host) and not self.public_urls and not self.share and not self.allowed_hosts

    @property
    def auth_enabled(self) -> bool:
        """Accounts are required whenever anyone but the owner at this machine can reach it."""
        if self.auth == "on":
            return True
        if self.auth == "off":
            return False
        return not self.loopback_only

    @property
    def secure_cookies(self) -> bool:
        return any(u.lower().startswith("https://") for u in self.public_urls)

    def with_(self, **kw: object) -> "Settings":
        return replace(self, **kw)

    def ensure_dirs(self) -> None:
        for d in (self.data_dir, self.assets_dir, self.work_root, self.previews_dir, self.logs_dir, self.models_dir):
            d.mkdir(parents=True, exist_ok=True)

    def check_bind(self) -> None:
        """Refuse to be reachable by others without accounts."""
        if self.auth not in ("auto", "on", "off"):
            raise SystemExit(f"--auth must be auto, on or off (got {self.auth!r})")
        if self.auth == "off" and not self.loopback_only:
            raise SystemExit(
                f"refusing to start with accounts off: host {self.host}"
                + (f", public URL {', '.join(self.public_urls)}" if self.public_urls else "")
                + (", share tunnel" if self.share else "")
                + " would let others in without a login. Drop --auth off (accounts turn on by themselves).")
        for u in self.public_urls:
            if not u.lower().startswith(("http://", "https://")) or "/" in u.split("://", 1)[1].rstrip("/"):
                raise SystemExit(f"--public-url must be scheme://host[:port] (got {u!r})")


def _is_loopback_name(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_data_dir() -> Path:
    return Path(_env("STUDIO_DATA_DIR", str(Path.home() / ".studio"))).expanduser()


def load(data_dir: str | Path | None = None, **overrides: object) -> Settings:
    """Build settings: explicit args win over STUDIO_* environment, which wins over defaults."""
    env_over: dict[str, object] = {}
    def words(raw: str) -> tuple[str, ...]:
        return tuple(w for w in raw.replace(",", " ").split() if w)

    for key, cast in (("device", str), ("dtype", str), ("workers", int), ("max_upload_bytes", int),
                      ("stale_after_s", float), ("heartbeat_s", float), ("default_model", str), ("auth", str),
                      ("public_urls", words), ("allowed_hosts", words), ("max_json_bytes", int),
                      ("share_server_address", str), ("model_cache_mb", int), ("adapter_cache_mb", int),
                      ("database_url", str), ("queue_url", str), ("engines", words), ("lease_s", float),
                      ("claim_poll_s", float), ("recover_every_s", float), ("max_auto_retries", int),
                      ("worker_host", str)):
        raw = os.environ.get(f"STUDIO_{key.upper()}")
        if raw:
            env_over[key] = cast(raw)
    if os.environ.get("STUDIO_ASSETS_DIR"):
        env_over["assets_root"] = os.environ["STUDIO_ASSETS_DIR"]
    if os.environ.get("STUDIO_MODEL_DIRS"):
        env_over["model_dirs"] = tuple(os.environ["STUDIO_MODEL_DIRS"].split(os.pathsep))
    env_over.update({k: v for k, v in overrides.items() if v is not None})
    path = Path(data_dir).expanduser() if data_dir else default_data_dir()
    return Settings(data_dir=path.resolve(), **env_over)  # type: ignore[arg-type]
