"""The agent's settings: broker URL, rig name and token, data folder, telemetry interval.

The token comes from a 0600 file (`<data dir>/token`, or MORPHEUS_NODE_TOKEN_FILE), or from MORPHEUS_NODE_TOKEN
for containers; never from the command line, where `ps` would show it.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from .protocol import NODE_NAME_RE


class AgentConfigError(ValueError):
    pass


@dataclass(frozen=True)
class AgentConfig:
    broker_url: str
    node: str
    token: str
    data_dir: Path
    telemetry_interval: float = 5.0
    max_downloads: int = 2
    disk_margin: int = 1 << 30
    extra_model_dirs: tuple = ()
    # How far this rig's clock may differ from the panel's before a command counts as expired or from the future.
    clock_tolerance: float = 30.0
    # Tests and drills only: play a rig whose clock is this many seconds off (MORPHEUS_AGENT_CLOCK_SKEW).
    clock_skew: float = 0.0
    # An unacknowledged outcome is sent again after this long, doubling up to 10 min (MORPHEUS_AGENT_RESEND_AFTER).
    resend_after: float = 15.0
    # How often the rig tells the panel what it still has in flight (MORPHEUS_AGENT_INVENTORY_INTERVAL).
    inventory_interval: float = 60.0

    @property
    def models_dir(self):
        return Path(self.data_dir) / "models"

    @property
    def ccache_dir(self):
        """MORPHEUS_CCACHE_DIR, else CCACHE_DIR, else inside the data folder: rebuilds take seconds."""
        return Path(os.environ.get("MORPHEUS_CCACHE_DIR") or os.environ.get("CCACHE_DIR")
                    or Path(self.data_dir) / "ccache")

    @property
    def state_dir(self):
        return Path(self.data_dir) / "state"

    @property
    def router_dir(self):
        """The proxy-router's working folder (its .env, models-config.json, cookie, storage):
        MORPHEUS_AGENT_ROUTER_DIR, else inside the agent's state folder."""
        return Path(os.environ.get("MORPHEUS_AGENT_ROUTER_DIR") or self.state_dir / "proxy-router")

    @property
    def model_dirs(self):
        """Where GGUF files may live: the agent's own folder plus any the provider already had (the seed's models/)."""
        return (self.models_dir, *self.extra_model_dirs)

    def __post_init__(self):
        if not 1 <= self.max_downloads <= 16:
            raise AgentConfigError("MORPHEUS_MAX_DOWNLOADS must be between 1 and 16")
        for folder in self.extra_model_dirs:
            if not Path(folder).is_absolute():
                raise AgentConfigError(f"model folder {folder!r} must be an absolute path")
        if not self.broker_url.startswith(("redis://", "rediss://", "valkey://", "unix://")):
            raise AgentConfigError("broker URL must be a redis:// or rediss:// URL")
        if not NODE_NAME_RE.match(self.node or ""):
            raise AgentConfigError(f"rig name {self.node!r} is not a valid slug (a-z, 0-9, '-')")
        if not self.token or len(self.token) < 16 or not self.token.isascii() or not self.token.isprintable():
            raise AgentConfigError("rig token is missing or malformed (copy it from the panel's enrolment page)")
        if not -86400 <= self.clock_skew <= 86400:
            raise AgentConfigError("MORPHEUS_AGENT_CLOCK_SKEW must be within a day")
        if not 0 <= self.clock_tolerance <= 3600:
            raise AgentConfigError("MORPHEUS_AGENT_CLOCK_TOLERANCE must be between 0 and 3600 seconds")
        if not 0.2 <= self.telemetry_interval <= 3600:
            raise AgentConfigError("telemetry interval must be between 0.2 and 3600 seconds")
        if not 0.2 <= self.resend_after <= 3600:
            raise AgentConfigError("MORPHEUS_AGENT_RESEND_AFTER must be between 0.2 and 3600 seconds")
        if not 0.5 <= self.inventory_interval <= 86400:
            raise AgentConfigError("MORPHEUS_AGENT_INVENTORY_INTERVAL must be between 0.5 and 86400 seconds")

    @classmethod
    def from_env(cls, environ=None):
        env = os.environ if environ is None else environ
        try:
            interval = float(env.get("MORPHEUS_TELEMETRY_INTERVAL", "5"))
        except ValueError:
            raise AgentConfigError("MORPHEUS_TELEMETRY_INTERVAL must be a number of seconds") from None
        try:
            max_downloads = int(env.get("MORPHEUS_MAX_DOWNLOADS", "2"))
            disk_margin = int(env.get("MORPHEUS_DOWNLOAD_DISK_MARGIN_MB", "1024")) * 1024 * 1024
        except ValueError:
            raise AgentConfigError("MORPHEUS_MAX_DOWNLOADS and MORPHEUS_DOWNLOAD_DISK_MARGIN_MB must be integers") from None
        try:
            tolerance = float(env.get("MORPHEUS_AGENT_CLOCK_TOLERANCE", "30"))
            skew = float(env.get("MORPHEUS_AGENT_CLOCK_SKEW", "0"))
            resend = float(env.get("MORPHEUS_AGENT_RESEND_AFTER", "15"))
            inventory = float(env.get("MORPHEUS_AGENT_INVENTORY_INTERVAL", "60"))
        except ValueError:
            raise AgentConfigError("MORPHEUS_AGENT_CLOCK_TOLERANCE, _CLOCK_SKEW, _RESEND_AFTER and _INVENTORY_INTERVAL "
                                   "must be numbers of seconds") from None
        extra = tuple(Path(p) for p in env.get("MORPHEUS_AGENT_MODEL_DIRS", "").split(":") if p.strip())
        data_dir = Path(env.get("MORPHEUS_AGENT_DATA_DIR", Path.home() / ".morpheus-agent"))
        return cls(
            max_downloads=max_downloads,
            disk_margin=max(0, disk_margin),
            extra_model_dirs=extra,
            broker_url=env.get("MORPHEUS_BROKER_URL", ""),
            node=env.get("MORPHEUS_NODE", ""),
            token=env.get("MORPHEUS_NODE_TOKEN") or read_token_file(env.get("MORPHEUS_NODE_TOKEN_FILE")
                                                                     or data_dir / "token"),
            data_dir=data_dir,
            telemetry_interval=interval,
            clock_tolerance=tolerance,
            clock_skew=skew,
            resend_after=resend,
            inventory_interval=inventory,
        )


def read_token_file(path):
    """The rig's token from its file; a file others can read is refused (it opens this rig's broker account)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise AgentConfigError(f"no rig token: put it in {path} (chmod 600) or set MORPHEUS_NODE_TOKEN") from None
    if mode & 0o077:
        raise AgentConfigError(f"{path} is readable by other users: run `chmod 600 {path}`")
    return path.read_text().strip()
