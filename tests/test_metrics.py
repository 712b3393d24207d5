"""/metrics for Prometheus: who may scrape it, what it says (parsed with prometheus-client's own parser and held
against the database rows), what a scrape costs as the fleet grows, and the Grafana dashboard shipped beside it."""

import gzip
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from hosting.models import Build, Deployment
from marketplace.models import Router
from metrics import access, views
from metrics.collector import DEPLOYMENT_STATES, RIG_STATUSES
from models_catalog.models import RigFile
from nodes.agent.protocol import ROUTER_STATES
from nodes.models import GPU, Node, Operation
from tests.helpers import make_node, report
from tests.test_deploy import manage
from tests.test_reports import hardware, telemetry

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "morpheus.json"
TOKEN = "metrics-test-token-" + "t" * 24
MiB = 1024**2


@pytest.fixture(autouse=True)
def scrape_settings(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOW = []
    return settings


def rig(name, gpus=2, seen=None, serving=None, **reading):
    """A rig whose agent sent its hardware and one reading (through the panel's ingest) at `seen` (default now)."""
    node, token = make_node(name)
    at = seen or timezone.now()
    assert report(name, token, "hardware", hardware(gpu_count=gpus), now=at) is None
    payload = telemetry(gpu_count=gpus, at=at.timestamp())
    for index, gpu in enumerate(payload["gpus"]):
        gpu.update(util=10 + index, temp_c=60 + index, fan=30 + index, **reading)
    if serving is not None:
        payload["servers"] = [{"at": at.timestamp(), **item} for item in serving]
    assert report(name, token, "telemetry", payload, now=at) is None
    node.refresh_from_db()
    return node, token


def deployment(node, name="tiny", port=8080, **fields):
    build = Build.objects.create(node=node, source="/src", ref="b1", status=Build.READY, binary_path="/opt/ls")
    rig_file = RigFile.objects.create(node=node, path=f"/models/{name}-Q4_K_M.gguf", size=1)
    return Deployment.objects.create(node=node, name=name, model_file=rig_file, build=build, port=port, **fields)


def serving(row, **changes):
    return {"deployment": row.pk, "generated_tps": 31.5, "prompt_tps": 120.0, "tokens_generated": 900,
            "prompt_tokens": 400, "requests_processing": 2, "requests_deferred": 1, "busy_per_decode": 1.5,
            "slots_busy": 2, "slots_total": 4, "kv_used": 1024, "kv_total": 4096, **changes}


def full_rig(name, gpus=2):
    """A rig with GPUs, a healthy deployment serving live, a proxy-router and operations of several outcomes."""
    node, token = make_node(name)
    row = deployment(node, actual_state="healthy", restarts=2)
    now = timezone.now()
    assert report(name, token, "hardware", hardware(gpu_count=gpus), now=now) is None
    payload = telemetry(gpu_count=gpus, at=now.timestamp())
    payload["servers"] = [{"at": now.timestamp(), **serving(row)}]
    assert report(name, token, "telemetry", payload, now=now) is None
    Router.objects.create(node=node, binary_path="/opt/proxy-router", state="healthy", snapshot={"open_sessions": 3})
    for kind, status in [(Operation.PING, Operation.SUCCEEDED), (Operation.BUILD_LLAMA, Operation.FAILED),
                         (Operation.DOWNLOAD_MODEL, Operation.RUNNING), (Operation.LAUNCH, Operation.QUEUED)]:
        Operation.objects.create(node=node, kind=kind, status=status)
    return node


def scrape(client, token=TOKEN, **extra):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token is not None else {}
    return client.get("/metrics", **headers, **extra)


def samples(text):
    """{(sample name, frozenset of labels): value}, and the families as the parser read them."""
    families = list(text_string_to_metric_families(text))
    found = {}
    for family in families:
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in found, f"{key} twice"
            found[key] = sample.value
    return found, families


def key(name, **labels):
    return name, frozenset(labels.items())


def gpu_labels(gpu):
    return {"rig": gpu.node.name, "gpu": str(gpu.index), "UUID": gpu.uuid, "modelName": gpu.name}


# --- who may scrape -------------------------------------------------------------------------------------------------
def test_it_refuses_a_scrape_and_says_how_to_configure_when_nothing_is_set(client, settings):
    settings.METRICS_TOKEN, settings.METRICS_ALLOW = "", []
    response = client.get("/metrics")
    assert response.status_code == 403
    assert "MORPHEUS_METRICS_TOKEN" in response.content.decode()
    assert "MORPHEUS_METRICS_ALLOW" in response.content.decode()


def test_it_refuses_a_scrape_without_the_token_and_with_a_wrong_one(client):
    make_node("alpha")
    missing = scrape(client, token=None)
    assert missing.status_code == 401 and missing["WWW-Authenticate"].startswith("Bearer")
    wrong = scrape(client, token=TOKEN[:-1] + "x")
    assert wrong.status_code == 401 and b"alpha" not in wrong.content
    basic = client.get("/metrics", HTTP_AUTHORIZATION=f"Basic {TOKEN}")
    assert basic.status_code == 401
    for response in (missing, wrong, basic):
        assert TOKEN not in response.content.decode() and TOKEN not in str(response.headers)
    ok = scrape(client)
    assert ok.status_code == 200 and ok["Content-Type"].startswith("text/plain; version=0.0.4")
    assert 'morpheus_rig_status{rig="alpha",status="new"} 1.0' in ok.content.decode()


def test_it_accepts_an_allow_listed_address_without_a_token_and_no_other(settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOW = access.parse_networks(["10.20.0.0/16", "::1"])
    factory = RequestFactory()
    for address, status in [("10.20.3.4", 200), ("::1", 200), ("::ffff:10.20.9.9", 200), ("10.21.0.1", 403),
                            ("127.0.0.1", 403), ("", 403)]:
        response = views.scrape(factory.get("/metrics", REMOTE_ADDR=address))
        assert response.status_code == status, address
    refused = views.scrape(factory.get("/metrics", REMOTE_ADDR="10.21.0.1"))
    assert "10.21.0.1 is not in MORPHEUS_METRICS_ALLOW" in refused.content.decode()


def test_a_wrong_token_is_refused_even_from_an_allowed_network(settings):
    settings.METRICS_ALLOW = access.parse_networks(["10.0.0.0/8"])
    factory = RequestFactory()
    wrong = views.scrape(factory.get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer nope-nope"))
    assert wrong.status_code == 401
    right = views.scrape(factory.get("/metrics", REMOTE_ADDR="192.0.2.1", HTTP_AUTHORIZATION=f"Bearer {TOKEN}"))
    assert right.status_code == 200


def test_prometheus_inside_the_deployment_is_not_redirected_to_https(client, settings):
    settings.SECURE_SSL_REDIRECT = True  # production's default; compose's Prometheus speaks plain HTTP to web:8000
    assert client.get("/").status_code == 301
    response = scrape(client)
    assert response.status_code == 200 and b"morpheus_operations_total" in response.content


def test_a_scrape_asking_for_gzip_gets_it_compressed(client):
    full_rig("alpha", gpus=8)
    plain = scrape(client).content
    response = scrape(client, HTTP_ACCEPT_ENCODING="gzip")
    assert response["Content-Encoding"] == "gzip" and len(response.content) < len(plain) / 3
    found, _ = samples(gzip.decompress(response.content).decode())
    before = samples(plain.decode())[0]
    assert found.keys() == before.keys()
    assert {k: v for k, v in found.items() if k[0].startswith("DCGM")} == {
        k: v for k, v in before.items() if k[0].startswith("DCGM")}


def test_it_refuses_a_post(client):
    assert client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405


@pytest.mark.parametrize("raw, message", [
    (["10.0.0.1/8"], "'10.0.0.1/8' is not a network (10.0.0.1/8 has host bits set)"),
    (["office"], "'office' is not a network"),
    (["10.0.0.0/33"], "'10.0.0.0/33' is not a network"),
])
def test_it_explains_an_allow_list_it_cannot_read(raw, message):
    with pytest.raises(access.AccessConfigError, match=re.escape(message)):
        access.parse_networks(raw)


def test_it_refuses_a_short_token_setting():
    with pytest.raises(access.AccessConfigError, match="shorter than 16 characters"):
        access.parse_token("short")
    assert access.parse_token("  " + TOKEN + "\n") == TOKEN


# --- what it says ---------------------------------------------------------------------------------------------------
def test_every_family_has_help_and_a_type(client):
    full_rig("alpha")
    text = scrape(client).content.decode()
    _, families = samples(text)
    assert len(families) >= 30
    for family in families:
        assert family.type in ("gauge", "counter"), family.name
        assert family.documentation, family.name
        assert f"# HELP {family.name}" in text
        assert re.search(rf"^# TYPE {family.name}(_total)? (gauge|counter)$", text, re.M), family.name


def test_gpu_series_carry_dcgm_exporter_names_and_equal_the_gpu_rows(client):
    rig("alpha", gpus=3)
    rig("beta", gpus=1, vram_used=5 * 1024**3, power_w=None)
    found, _ = samples(scrape(client).content.decode())
    gpus = list(GPU.objects.select_related("node"))
    assert len(gpus) == 4
    for gpu in gpus:
        labels = gpu_labels(gpu)
        assert found[key("DCGM_FI_DEV_GPU_UTIL", **labels)] == gpu.util
        assert found[key("DCGM_FI_DEV_GPU_TEMP", **labels)] == gpu.temp_c
        assert found[key("DCGM_FI_DEV_FAN_SPEED", **labels)] == gpu.fan
        assert found[key("DCGM_FI_DEV_SM_CLOCK", **labels)] == gpu.sm_clock
        assert found[key("DCGM_FI_DEV_FB_USED", **labels)] == gpu.vram_used / MiB
        assert found[key("DCGM_FI_DEV_FB_FREE", **labels)] == (gpu.vram_total - gpu.vram_used) / MiB
        assert found[key("DCGM_FI_DEV_FB_TOTAL", **labels)] == gpu.vram_total / MiB
        assert found[key("DCGM_FI_DEV_POWER_MGMT_LIMIT", **labels)] == gpu.power_limit_w
        if gpu.power_w is None:  # NVML could not tell: no sample, not a zero
            assert key("DCGM_FI_DEV_POWER_USAGE", **labels) not in found
        else:
            assert found[key("DCGM_FI_DEV_POWER_USAGE", **labels)] == gpu.power_w
    beta = GPU.objects.get(node__name="beta")
    assert (beta.vram_used, beta.power_w) == (5 * 1024**3, None)
    assert found[key("DCGM_FI_DEV_FB_USED", **gpu_labels(beta))] == 5 * 1024


def test_an_offline_rig_shows_its_status_and_age_but_no_old_readings(client):
    rig("alpha")
    old = timezone.now() - timedelta(minutes=10)
    beta, _ = rig("beta", seen=old)
    found, _ = samples(scrape(client).content.decode())
    for name, expected in (("alpha", "online"), ("beta", "offline")):
        for status in RIG_STATUSES:
            assert found[key("morpheus_rig_status", rig=name, status=status)] == (1 if status == expected else 0)
    assert found[key("morpheus_rig_last_seen_age_seconds", rig="beta")] == pytest.approx(600, abs=10)
    assert found[key("morpheus_rig_last_seen_age_seconds", rig="alpha")] == pytest.approx(0, abs=10)
    gpu = GPU.objects.select_related("node").get(node=beta, index=0)
    assert key("DCGM_FI_DEV_GPU_TEMP", **gpu_labels(gpu)) not in found
    assert key("morpheus_rig_disk_free_bytes", rig="beta") not in found
    assert found[key("DCGM_FI_DEV_FB_TOTAL", **gpu_labels(gpu))] == 24 * 1024  # a hardware fact, still true
    alpha = Node.objects.get(name="alpha")
    assert found[key("morpheus_rig_disk_free_bytes", rig="alpha")] == alpha.host_reading["disk_free"]
    assert found[key("morpheus_rig_cpu_percent", rig="alpha")] == alpha.host_reading["cpu_percent"]
    assert found[key("morpheus_rig_disk_total_bytes", rig="alpha")] == alpha.hardware["disk_total"]
    assert found[key("morpheus_rig_telemetry_interval_seconds", rig="alpha")] == 5.0
    assert found[key("morpheus_rig_clock_offset_seconds", rig="alpha")] == pytest.approx(alpha.clock_offset)


def test_a_rig_never_heard_from_is_new_with_no_age(client):
    make_node("fresh")
    found, _ = samples(scrape(client).content.decode())
    assert found[key("morpheus_rig_status", rig="fresh", status="new")] == 1
    assert key("morpheus_rig_last_seen_age_seconds", rig="fresh") not in found
    assert not any(name == "morpheus_panel_ingest_lag_seconds" for name, _ in found)


def test_the_ingest_lag_is_the_age_of_the_newest_report_applied(client):
    rig("alpha", seen=timezone.now() - timedelta(seconds=40))
    rig("beta", seen=timezone.now() - timedelta(seconds=300))
    found, _ = samples(scrape(client).content.decode())
    assert found[key("morpheus_panel_ingest_lag_seconds")] == pytest.approx(40, abs=5)


def test_deployments_show_state_restarts_and_live_serving_from_the_rows(client):
    node, token = make_node("alpha")
    live = deployment(node, "live", 8080, actual_state="healthy", restarts=2)
    crashed = deployment(node, "crashed", 8081, actual_state="failed", restarts=5, desired_state="running")
    stopped = deployment(node, "idle", 8082, actual_state="stopped", desired_state="stopped")
    now = timezone.now()
    assert report("alpha", token, "hardware", hardware(gpu_count=1), now=now) is None
    payload = telemetry(gpu_count=1, at=now.timestamp())
    payload["servers"] = [{"at": now.timestamp(), **serving(live)}, {"at": now.timestamp(), **serving(crashed)}]
    assert report("alpha", token, "telemetry", payload, now=now) is None
    found, _ = samples(scrape(client).content.decode())
    for row in Deployment.objects.select_related("model_file"):
        labels = {"rig": "alpha", "deployment": row.name, "model": f"{row.name}-Q4_K_M.gguf"}
        for state in DEPLOYMENT_STATES:
            assert found[key("morpheus_deployment_state", **labels, state=state)] == (state == row.actual_state)
        assert found[key("morpheus_deployment_restarts_total", **labels)] == row.restarts
        assert found[key("morpheus_deployment_desired_running", **labels)] == (row.desired_state == "running")
    labels = {"rig": "alpha", "deployment": "live", "model": "live-Q4_K_M.gguf"}
    stored = Deployment.objects.get(pk=live.pk).serving
    assert found[key("morpheus_deployment_generated_tokens_per_second", **labels)] == stored["generated_tps"] == 31.5
    assert found[key("morpheus_deployment_slots_busy", **labels)] == stored["slots_busy"] == 2
    assert found[key("morpheus_deployment_slots_total", **labels)] == 4
    assert found[key("morpheus_deployment_generated_tokens_total", **labels)] == 900
    assert found[key("morpheus_deployment_kv_cache_used_tokens", **labels)] == 1024
    # The failed server's metrics are stored, but not live: as on its page, they are not shown.
    assert Deployment.objects.get(pk=crashed.pk).serving
    for row in (crashed, stopped):
        labels = {"rig": "alpha", "deployment": row.name, "model": f"{row.name}-Q4_K_M.gguf"}
        assert key("morpheus_deployment_slots_busy", **labels) not in found


def test_serving_metrics_vanish_once_they_are_old(client):
    node, token = make_node("alpha")
    row = deployment(node, actual_state="healthy")
    old = timezone.now() - timedelta(seconds=60)  # 12 intervals of 5 s: older than 3
    payload = telemetry(gpu_count=1, at=old.timestamp())
    payload["servers"] = [{"at": old.timestamp(), **serving(row)}]
    assert report("alpha", token, "telemetry", payload, now=old) is None
    Node.objects.filter(pk=node.pk).update(last_seen=timezone.now())  # the rig itself is online
    found, _ = samples(scrape(client).content.decode())
    labels = {"rig": "alpha", "deployment": "tiny", "model": "tiny-Q4_K_M.gguf"}
    assert found[key("morpheus_deployment_state", **labels, state="healthy")] == 1
    assert key("morpheus_deployment_generated_tokens_per_second", **labels) not in found


def test_operations_are_counted_by_kind_and_outcome_as_the_rows_group(client):
    node, _ = make_node("alpha")
    rows = [(Operation.PING, Operation.SUCCEEDED)] * 3 + [(Operation.PING, Operation.FAILED)] + [
        (Operation.BUILD_LLAMA, Operation.CANCELLED), (Operation.DOWNLOAD_MODEL, Operation.RUNNING),
        (Operation.DOWNLOAD_MODEL, Operation.QUEUED), (Operation.DOWNLOAD_MODEL, Operation.QUEUED)]
    for kind, status in rows:
        Operation.objects.create(node=node, kind=kind, status=status)
    found, _ = samples(scrape(client).content.decode())
    for kind, _label in Operation.KIND_CHOICES:
        for outcome in Operation.TERMINAL:
            expected = Operation.objects.filter(kind=kind, status=outcome).count()
            assert found[key("morpheus_operations_total", kind=kind, outcome=outcome)] == expected
        for status in (Operation.QUEUED, Operation.RUNNING):
            expected = Operation.objects.filter(kind=kind, status=status).count()
            assert found[key("morpheus_operations_in_progress", kind=kind, status=status)] == expected
    assert found[key("morpheus_operations_total", kind="ping", outcome="succeeded")] == 3
    assert found[key("morpheus_operations_in_progress", kind="download_model", status="queued")] == 2


def test_routers_show_their_state_and_open_sessions(client):
    alpha, _ = make_node("alpha")
    beta, _ = make_node("beta")
    Router.objects.create(node=alpha, binary_path="/opt/r", state="degraded", snapshot={"open_sessions": 4})
    Router.objects.create(node=beta, binary_path="/opt/r", state="stopped", snapshot={})
    found, _ = samples(scrape(client).content.decode())
    for name, expected in (("alpha", "degraded"), ("beta", "stopped")):
        for state in ROUTER_STATES:
            assert found[key("morpheus_router_state", rig=name, state=state)] == (state == expected)
    assert found[key("morpheus_router_open_sessions", rig="alpha")] == 4
    assert key("morpheus_router_open_sessions", rig="beta") not in found


def test_a_gpu_name_with_quotes_is_escaped_and_read_back_whole(client):
    node, token = make_node("alpha")
    payload = hardware(gpu_count=1)
    payload["gpus"][0]["name"] = 'RTX "Special" \\ Edition\nTwo'
    assert report("alpha", token, "hardware", payload) is None
    found, _ = samples(scrape(client).content.decode())
    names = {dict(labels).get("modelName") for name, labels in found if name == "DCGM_FI_DEV_FB_TOTAL"}
    assert names == {GPU.objects.get().name}


# --- what a scrape costs --------------------------------------------------------------------------------------------
def test_a_scrape_costs_the_same_queries_at_2_and_12_rigs(client):
    def measured():
        with CaptureQueriesContext(connection) as captured:
            response = scrape(client)
        assert response.status_code == 200
        return len(captured), samples(response.content.decode())[0]

    for i in range(2):
        full_rig(f"rig-{i:02d}", gpus=4)
    small, small_found = measured()
    for i in range(2, 12):
        full_rig(f"rig-{i:02d}", gpus=4)
    large, large_found = measured()
    assert small == large <= 6, (small, large)
    temps = [k for k in large_found if k[0] == "DCGM_FI_DEV_GPU_TEMP"]
    assert len(temps) == 48  # every GPU of every rig is in the larger scrape
    assert sum(1 for k in small_found if k[0] == "DCGM_FI_DEV_GPU_TEMP") == 8
    assert sum(1 for k in large_found if k[0] == "morpheus_deployment_slots_busy") == 12


# --- the Grafana dashboard, Prometheus's configuration ----------------------------------------------------------------
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def metric_names(expr):
    """The metric names a PromQL expression (with Grafana's $variables) reads."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery durations
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables ($__rate_interval, $rig)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", expr):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in PROMQL_WORDS or re.fullmatch(r"\d+\w*", word):
            continue
        names.add(word)
    return names


def dashboard_expressions(board):
    exprs = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and query:
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query))
    return exprs


def test_the_promql_reader_finds_metric_names_and_nothing_else():
    expr = ('sum by (rig) (rate(morpheus_deployment_generated_tokens_total{rig=~"$rig", x="a(b)"}[$__rate_interval]))'
            ' / on(rig) group_left max(DCGM_FI_DEV_FB_TOTAL) > bool 0.5 or vector(0)')
    assert metric_names(expr) == {"morpheus_deployment_generated_tokens_total", "DCGM_FI_DEV_FB_TOTAL"}


def test_the_dashboard_reads_only_series_that_metrics_exports(client):
    full_rig("alpha")
    Deployment.objects.update(restarts=1)
    found, _ = samples(scrape(client).content.decode())
    exported = {name for name, _ in found}
    board = json.loads(DASHBOARD.read_text())
    exprs = dashboard_expressions(board)
    assert len(exprs) >= 10
    used = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= exported, (expr, names - exported)
        used |= names
    # The dashboard covers each part: rigs, GPUs, deployments, operations, the panel and the routers.
    for name in ("morpheus_rig_status", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_POWER_USAGE",
                 "morpheus_deployment_generated_tokens_per_second", "morpheus_operations_total",
                 "morpheus_panel_ingest_lag_seconds", "morpheus_router_open_sessions"):
        assert name in used, name
    # The datasource the provisioning file creates is the one every panel asks for.
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    for panel in board["panels"]:
        if panel.get("targets"):
            assert panel["datasource"]["uid"] == uid, panel["title"]


def test_prometheus_scrapes_the_panel_with_the_token_file():
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    job = next(job for job in config["scrape_configs"] if job["job_name"] == "morpheus")
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["web:8000"]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "/run/secrets/metrics_token"}


def test_prometheus_asking_for_openmetrics_gets_it_parseable(client):
    full_rig("alpha")
    response = scrape(client, HTTP_ACCEPT="application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5")
    assert response["Content-Type"].startswith("application/openmetrics-text")
    families = {family.name: family for family in openmetrics_families(response.content.decode())}
    assert families["morpheus_operations"].type == "counter"
    assert families["DCGM_FI_DEV_GPU_TEMP"].samples[0].value == GPU.objects.get(index=0).temp_c


def test_the_panel_refuses_to_start_with_an_allow_list_it_cannot_read(tmp_path):
    result = manage("check", env_overrides={"MORPHEUS_METRICS_ALLOW": "10.0.0.0/8, 192.168.1.1/24"}, tmp_path=tmp_path)
    assert result.returncode != 0
    assert ("ImproperlyConfigured: MORPHEUS_METRICS_ALLOW: '192.168.1.1/24' is not a network "
            "(192.168.1.1/24 has host bits set)") in result.stderr
    result = manage("check", env_overrides={"MORPHEUS_METRICS_TOKEN": "tiny"}, tmp_path=tmp_path)
    assert result.returncode != 0 and "MORPHEUS_METRICS_TOKEN is shorter than 16 characters" in result.stderr
    assert manage("check", env_overrides={"MORPHEUS_METRICS_ALLOW": "10.0.0.0/8,::1", "MORPHEUS_METRICS_TOKEN": TOKEN},
                  tmp_path=tmp_path).returncode == 0
