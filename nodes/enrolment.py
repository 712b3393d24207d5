"""What the panel prints, once, for starting a rig's agent: a shell command and a compose service."""

import shlex

from django.conf import settings

AGENT_DATA_DIR = "/var/lib/morpheus-agent"


def agent_command(node, token):
    return (
        f"MORPHEUS_NODE_TOKEN={shlex.quote(token)} python -m nodes.agent"
        f" --broker {shlex.quote(settings.RIG_BROKER_URL)} --node {node.name} --data-dir {AGENT_DATA_DIR}"
    )


def compose_service(node, token):
    return f"""  agent-{node.name}:
    image: morpheus-agent:latest  # built from Dockerfile.agent (CUDA toolkit for llama.cpp builds)
    command: ["python", "-m", "nodes.agent", "--node", "{node.name}", "--data-dir", "{AGENT_DATA_DIR}"]
    environment:
      MORPHEUS_BROKER_URL: "{settings.RIG_BROKER_URL}"
      MORPHEUS_NODE_TOKEN: "{token}"
    volumes:
      - agent-{node.name}-data:{AGENT_DATA_DIR}
    restart: unless-stopped
    deploy:
      resources:
        reservations:
          devices:
            - driver: nvidia
              count: all
              capabilities: [gpu]"""
