"""The agent's settings: broker URL, rig name and token, data folder, telemetry interval."""

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

    def __post_init__(self):
        if not self.broker_url.startswith(("redis://", "rediss://", "valkey://", "unix://")):
            raise AgentConfigError("broker URL must be a redis:// or rediss:// URL")
        if not NODE_NAME_RE.match(self.node or ""):
            raise AgentConfigError(f"rig name {self.node!r} is not a valid slug (a-z, 0-9, '-')")
        if not self.token or len(self.token) < 16 or not self.token.isascii() or not self.token.isprintable():
            raise AgentConfigError("rig token is missing or malformed (copy it from the panel's enrolment page)")
        if not 0.2 <= self.telemetry_interval <= 3600:
            raise AgentConfigError("telemetry interval must be between 0.2 and 3600 seconds")

    @classmethod
    def from_env(cls, environ=None):
        env = os.environ if environ is None else environ
        try:
            interval = float(env.get("MORPHEUS_TELEMETRY_INTERVAL", "5"))
        except ValueError:
            raise AgentConfigError("MORPHEUS_TELEMETRY_INTERVAL must be a number of seconds") from None
        return cls(
            broker_url=env.get("MORPHEUS_BROKER_URL", ""),
            node=env.get("MORPHEUS_NODE", ""),
            token=env.get("MORPHEUS_NODE_TOKEN", ""),
            data_dir=Path(env.get("MORPHEUS_AGENT_DATA_DIR", Path.home() / ".morpheus-agent")),
            telemetry_interval=interval,
        )
