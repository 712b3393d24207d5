"""What the panel prints, once, for starting a rig's agent: a shell command and a compose service.

They carry only that rig's credentials: the broker address without the panel's admin login (the agent logs in as
its own rig account, from its token) and the token, written to a 0600 file rather than put on a command line.
"""

import ipaddress
import shlex
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings

AGENT_DATA_DIR = "~/.morpheus-agent"
CONTAINER_DATA_DIR = "/var/lib/morpheus-agent"


def rig_broker_url():
    """MORPHEUS_RIG_BROKER_URL (else REDIS_URL) with any user and password removed: never the admin's login."""
    parts = urlsplit(settings.RIG_BROKER_URL)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def broker_is_loopback():
    """Whether rigs are given a loopback broker address, which only an agent on the panel's own machine reaches."""
    host = (urlsplit(settings.RIG_BROKER_URL).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def agent_command(node, token):
    data_dir = AGENT_DATA_DIR
    return (
        f"mkdir -p {data_dir} && (umask 077 && printf '%s\\n' {shlex.quote(token)} > {data_dir}/token)\n"
        f".venv/bin/python -m nodes.agent --broker {shlex.quote(rig_broker_url())} --node {node.name}"
        f" --data-dir {data_dir}"
    )


SYSTEMD_UNIT = "deploy/systemd/morpheus-agent@.service"
SYSTEMD_DATA_DIR = "/var/lib/morpheus-agent"


def systemd_commands(node, token):
    """Install the agent as a systemd service (restarted whenever it stops; its servers outlive it), as root on the
    GPU host, from a checkout in /opt/morpheus-admin. The token goes to a 0600 file owned by the agent's user."""
    name, data_dir = node.name, f"{SYSTEMD_DATA_DIR}/{node.name}"
    return "\n".join([
        f"useradd --system --home-dir {SYSTEMD_DATA_DIR} --shell /usr/sbin/nologin morpheus 2>/dev/null; "
        f"install -d -o morpheus -g morpheus -m 700 {SYSTEMD_DATA_DIR} {data_dir}",
        f"(umask 077 && printf '%s\\n' {shlex.quote(token)} > {data_dir}/token) && chown morpheus: {data_dir}/token",
        f"install -d /etc/morpheus-agent && printf 'MORPHEUS_BROKER_URL=%s\\n' {shlex.quote(rig_broker_url())}"
        f" > /etc/morpheus-agent/{name}.env",
        f"cp /opt/morpheus-admin/{SYSTEMD_UNIT} /etc/systemd/system/ && systemctl daemon-reload",
        f"systemctl enable --now morpheus-agent@{name}",
    ])


def compose_service(node, token):
    loopback = """
    # The broker address below is a loopback one: from a container it is reachable only on the host's own network,
    # and only on the panel's machine. For a rig elsewhere, remove network_mode and put an address that rig can
    # reach in MORPHEUS_BROKER_URL (set it as MORPHEUS_RIG_BROKER_URL on the panel to have it printed here).
    network_mode: host""" if broker_is_loopback() else ""
    return f"""  agent-{node.name}:
    image: morpheus-agent:latest  # built from Dockerfile.agent (CUDA toolkit for llama.cpp builds)
    # "python" is the image's virtualenv (/opt/venv/bin is first on its PATH).
    command: ["python", "-m", "nodes.agent", "--node", "{node.name}", "--data-dir", "{CONTAINER_DATA_DIR}"]{loopback}
    environment:
      MORPHEUS_BROKER_URL: "{rig_broker_url()}"
      MORPHEUS_NODE_TOKEN: "{token}"
    volumes:
      - agent-{node.name}-data:{CONTAINER_DATA_DIR}
    restart: unless-stopped
    deploy:
      resources:
        reservations:
          devices:
            - driver: nvidia
              count: all
              capabilities: [gpu]"""
