"""The agent's own settings (plain Python, no Django)."""

from pathlib import Path

import pytest

from nodes.agent.config import AgentConfig, AgentConfigError

TOKEN = "Zq3-vN8_kLp2Rt6xWc9yHb4mJd7sFg1a"


def env(**changes):
    base = {"MORPHEUS_BROKER_URL": "redis://panel.lan:6379/0", "MORPHEUS_NODE": "rig-01",
            "MORPHEUS_NODE_TOKEN": TOKEN, "MORPHEUS_AGENT_DATA_DIR": "/var/lib/morpheus-agent"}
    base.update(changes)
    return {key: value for key, value in base.items() if value is not None}


def test_it_reads_its_settings_from_the_environment():
    config = AgentConfig.from_env(env(MORPHEUS_TELEMETRY_INTERVAL="2.5"))
    assert config == AgentConfig("redis://panel.lan:6379/0", "rig-01", TOKEN, Path("/var/lib/morpheus-agent"), 2.5)


def test_it_reports_every_five_seconds_into_the_home_folder_by_default():
    config = AgentConfig.from_env(env(MORPHEUS_AGENT_DATA_DIR=None))
    assert config.telemetry_interval == 5.0
    assert config.data_dir == Path.home() / ".morpheus-agent"


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://user:pw@h:6380/1", "unix:///run/redis.sock"])
def test_it_accepts_redis_broker_urls(url):
    assert AgentConfig.from_env(env(MORPHEUS_BROKER_URL=url)).broker_url == url


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"MORPHEUS_BROKER_URL": None}, "broker URL must be a redis://"),
        ({"MORPHEUS_BROKER_URL": "amqp://guest@h//"}, "broker URL must be a redis://"),
        ({"MORPHEUS_BROKER_URL": "http://panel.lan/"}, "broker URL must be a redis://"),
        ({"MORPHEUS_NODE": None}, "rig name '' is not a valid slug"),
        ({"MORPHEUS_NODE": "Rig 01"}, "is not a valid slug"),
        ({"MORPHEUS_NODE": "rig_01"}, "is not a valid slug"),
        ({"MORPHEUS_NODE": "-rig"}, "is not a valid slug"),
        ({"MORPHEUS_NODE": "r" * 41}, "is not a valid slug"),
        ({"MORPHEUS_NODE_TOKEN": None}, "no rig token: put it in /var/lib/morpheus-agent/token"),
        ({"MORPHEUS_NODE_TOKEN": "short"}, "rig token is missing or malformed"),
        ({"MORPHEUS_NODE_TOKEN": TOKEN + "\t"}, "rig token is missing or malformed"),
        ({"MORPHEUS_NODE_TOKEN": TOKEN[:-1] + "é"}, "rig token is missing or malformed"),
        ({"MORPHEUS_NODE_TOKEN": TOKEN + "\n"}, "rig token is missing or malformed"),
        ({"MORPHEUS_TELEMETRY_INTERVAL": "fast"}, "must be a number of seconds"),
        ({"MORPHEUS_TELEMETRY_INTERVAL": "0.05"}, "between 0.2 and 3600"),
        ({"MORPHEUS_TELEMETRY_INTERVAL": "86400"}, "between 0.2 and 3600"),
        ({"MORPHEUS_TELEMETRY_INTERVAL": "nan"}, "between 0.2 and 3600"),
        ({"MORPHEUS_TELEMETRY_INTERVAL": "inf"}, "between 0.2 and 3600"),
    ],
)
def test_it_refuses_to_start_with_bad_settings(changes, message):
    with pytest.raises(AgentConfigError, match=message):
        AgentConfig.from_env(env(**changes))


def test_it_never_prints_the_token_in_an_error():
    with pytest.raises(AgentConfigError) as raised:
        AgentConfig.from_env(env(MORPHEUS_NODE_TOKEN=TOKEN + "\t"))
    assert TOKEN not in str(raised.value)
