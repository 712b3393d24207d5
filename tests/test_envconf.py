import os
import subprocess
import sys

import pytest

from morpheus_admin.envconf import ConfigError, env_bool, env_float, env_int, env_list
from tests.harness import ROOT

NAME = "MORPHEUS_TEST_KNOB"


@pytest.fixture
def knob(monkeypatch):
    def set_to(value):
        monkeypatch.setenv(NAME, value)

    monkeypatch.delenv(NAME, raising=False)
    return set_to


@pytest.mark.parametrize("raw", ["1", "true", "True", "YES", "on", " true "])
def test_it_reads_true_booleans(knob, raw):
    knob(raw)
    assert env_bool(NAME, False) is True


@pytest.mark.parametrize("raw", ["0", "false", "FALSE", "no", "off"])
def test_it_reads_false_booleans(knob, raw):
    knob(raw)
    assert env_bool(NAME, True) is False


@pytest.mark.parametrize("raw", ["maybe", "ture", "2", "enabled", "y"])
def test_it_refuses_a_boolean_it_cannot_read(knob, raw):
    knob(raw)
    with pytest.raises(ConfigError, match=f"{NAME}='{raw}' is not a boolean"):
        env_bool(NAME, False)


def test_it_uses_the_default_when_unset(knob):
    assert env_bool(NAME, True) is True
    assert env_int(NAME, 7) == 7
    assert env_float(NAME, 2.5) == 2.5
    assert env_list(NAME, ["a"]) == ["a"]


def test_it_reads_integers_within_bounds(knob):
    knob("120")
    assert env_int(NAME, 1, minimum=1, maximum=3600) == 120
    knob("")
    assert env_int(NAME, 9) == 9


@pytest.mark.parametrize("raw, message", [("12.5", "is not an integer"), ("ten", "is not an integer"),
                                          ("0", "is below 1"), ("5000", "is above 3600")])
def test_it_refuses_an_integer_that_is_wrong_or_out_of_bounds(knob, raw, message):
    knob(raw)
    with pytest.raises(ConfigError, match=message):
        env_int(NAME, 1, minimum=1, maximum=3600)


def test_it_reads_numbers_within_bounds(knob):
    knob("0.5")
    assert env_float(NAME, 10.0, minimum=0.2) == 0.5


@pytest.mark.parametrize("raw, message", [("fast", "is not a number"), ("0.1", "is below 0.2"),
                                          ("nan", "is not a number"), ("inf", "is not a number"),
                                          ("-inf", "is not a number")])
def test_it_refuses_a_number_that_is_wrong_or_out_of_bounds(knob, raw, message):
    knob(raw)
    with pytest.raises(ConfigError, match=message):
        env_float(NAME, 10.0, minimum=0.2)


def test_it_reads_comma_separated_lists(knob):
    knob(" panel.example.com, ,10.0.0.5 ")
    assert env_list(NAME, []) == ["panel.example.com", "10.0.0.5"]


def settings_import(**env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "MORPHEUS_", "DATABASE_URL"))}
    base.update(env)
    return subprocess.run([sys.executable, "-c", "import morpheus_admin.settings"], env=base, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_it_refuses_to_start_the_panel_with_a_bad_boolean():
    done = settings_import(DJANGO_DEBUG="perhaps")
    assert done.returncode != 0
    assert "ImproperlyConfigured: DJANGO_DEBUG='perhaps' is not a boolean" in done.stderr


def test_it_refuses_to_start_in_production_without_a_secret_key():
    done = settings_import(MORPHEUS_ENV="production")
    assert done.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in done.stderr
    assert settings_import(MORPHEUS_ENV="production", DJANGO_SECRET_KEY="s" * 50).returncode == 0
