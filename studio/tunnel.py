"""``--share``: Gradio's share tunnel, when its ``frpc`` client can be had.

Gradio downloads the client from a CDN on first use and asks gradio.app for a share server;
neither works on an offline machine. We check before starting and say exactly what to do,
instead of hanging or failing later. A self-hosted share server
(``--share-server-address host:port``) needs no gradio.app, only the client binary.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from studio.config import Settings


def share_client_path() -> Path:
    from gradio import tunneling

    return Path(tunneling.BINARY_PATH)


def check_share_client(settings: Settings) -> None:
    """Exit with instructions when the tunnel client is missing (we never download it)."""
    from gradio import tunneling

    path = share_client_path()
    if path.is_file() and os.access(path, os.X_OK):
        return
    raise SystemExit(
        "--share needs gradio's tunnel client, which gradio downloads on first use from\n"
        f"  {tunneling.BINARY_URL}\n"
        "and this Studio never downloads at run time. To use --share, fetch that file on a machine with\n"
        f"internet access, copy it to\n  {path}\nand make it executable (chmod +x). Otherwise make the Studio "
        "public with a reverse proxy and --public-url (docs/security.md: Caddy with TLS).")


def open_share_tunnel(settings: Settings) -> str:
    """Start the tunnel to this server; returns the public URL."""
    from gradio.networking import setup_tunnel

    address = settings.share_server_address or os.environ.get("GRADIO_SHARE_SERVER_ADDRESS")
    try:
        return setup_tunnel("127.0.0.1", settings.port, secrets.token_urlsafe(32), address or None, None)
    except Exception as e:  # noqa: BLE001 - network failures of many kinds
        raise SystemExit(f"--share: could not open the tunnel ({e}). Offline machines need "
                         "--share-server-address of a reachable self-hosted share server, or --public-url "
                         "behind a reverse proxy.") from None
