"""How a server runs: the settings `medsam2 serve` builds from its options."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from medsam2.engine.models import DEFAULT_MODEL
from medsam2.errors import InputError

TOKEN_ENV = "MEDSAM2_TOKEN"


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, IPv6 with or without brackets) stays on this machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerSettings:
    """Everything a server needs; `create_app(settings)` builds the app from it."""

    data_dir: Path | None = None  # cases come from this folder; None: the samples that installed packages ship
    with_samples: bool = False  # offer the samples beside the data_dir cases too (`make serve` on a machine with data)
    upload_dir: Path | None = None  # uploads are kept here; None: a private folder removed at shutdown
    token: str | None = None  # every request must present it; None: no authentication
    host: str = "127.0.0.1"
    port: int = 8000
    # Without a token the server only listens on loopback, unless this is set (a trusted network).
    allow_unauthenticated: bool = False
    model: str = DEFAULT_MODEL
    devices: tuple[str, ...] = ("cpu",)  # one inference worker per entry; sessions go to the least busy
    compiled: bool = False  # SAM 2.1: compile the memory step (and on a GPU the encoder), warmed up as each device loads
    max_upload_bytes: int = 1 << 30
    max_sessions: int = 16  # open sessions over all clients; idle ones are closed first
    session_idle_seconds: float = 3600.0  # a session unused this long is closed (--idle-minutes)

    @property
    def checks_host_header(self) -> bool:
        """Without a token a loopback server answers only requests addressed to a loopback name, so a
        web page elsewhere cannot reach it through a DNS name rebound to 127.0.0.1."""
        return self.token is None and is_loopback(self.host)

    def check(self) -> None:
        """Raise `InputError` (one line) for settings that cannot work or would be unsafe."""
        if self.token is not None and len(self.token) < 8:
            raise InputError("--token: use at least 8 characters")
        if self.token is None and not is_loopback(self.host) and not self.allow_unauthenticated:
            raise InputError(
                f"--host {self.host}: refusing to listen beyond this machine without a token; "
                f"set --token (or ${TOKEN_ENV}), or pass --allow-unauthenticated on a trusted network"
            )
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise InputError(f"--data {self.data_dir}: no such folder")
        if self.upload_dir is not None and self.upload_dir.exists() and not self.upload_dir.is_dir():
            raise InputError(f"--upload-dir {self.upload_dir}: not a folder")
        if not 0 <= self.port <= 65535:
            raise InputError(f"--port {self.port}: choose 1-65535 (0 picks a free port)")
        if self.max_upload_bytes < 1:
            raise InputError("--max-upload-mb must be positive")
        if self.max_sessions < 1:
            raise InputError("--max-sessions must be at least 1")
        if not self.session_idle_seconds > 0:  # NaN too: no session would ever expire, and none would last at 0
            raise InputError(f"--idle-minutes {self.session_idle_seconds / 60:g}: give a positive number of minutes")
        if not self.devices:
            raise InputError("--device: give at least one device")
