"""The benchmark section of a deployment's page, the Benchmark button, a rig's sweep result stored, and the economics
settings page (anonymous, viewer, operator). Messages to rigs go to this process's memory:// broker."""

from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from hosting.models import Benchmark, Build, Deployment, EconomicsSettings
from models_catalog.models import RigFile
from nodes.agent import protocol
from nodes.models import HardwareProfile, Operation, Part
from tests.helpers import make_node, page, queued_messages, unsealed

pytestmark = pytest.mark.django_db

GPU = {"index": 0, "name": "NVIDIA GeForce RTX 3090", "mem_bandwidth_gbs": 936.0}
LLAMA_8B = {"architecture": "llama", "parameters": 8_030_261_248, "file_type": "Q4_K_M", "header_bytes": 8_000_000}


@pytest.fixture
def clients(viewer, operator_client):
    """(anonymous, viewer, operator): three separate sessions (the shared fixtures are one client)."""
    viewer_client = Client()
    viewer_client.force_login(viewer)
    return Client(), viewer_client, operator_client


def _rig(name="alpha", gpus=(GPU,)):
    node, _ = make_node(name, hardware={"gpus": list(gpus), "hostname": name}, last_seen=timezone.now())
    queued_messages(node.queue)
    return node


def _deployment(node, name="llama", **fields):
    rig_file = RigFile.objects.create(node=node, path=f"/m/{name}-Meta-Llama-3-8B-Q4_K_M.gguf",
                                      size=4_936_000_000, facts=LLAMA_8B)
    build = Build.objects.create(node=node, status=Build.READY, binary_path="/opt/llama-server",
                                 version="version: 1 (abc1234)")
    values = {"port": 8080, "parallel": 8, "ctx_size": 16384, "n_gpu_layers": 99, "actual_state": "healthy",
              "api_key": "secret-key-123456", **fields}
    return Deployment.objects.create(node=node, name=name, model_file=rig_file, build=build, **values)


def _step(concurrency, per_stream, aggregate, power=300.0):
    return {"concurrency": concurrency, "wall_s": 2.0, "generated": 128 * concurrency, "aggregate_tps": aggregate,
            "per_stream_tps": per_stream, "slowest_stream_tps": per_stream * 0.9, "prompt_tps": 3900.0,
            "ttft_ms": 120.0 + concurrency, "ttft_max_ms": 150.0 + concurrency, "power_w": power,
            "power": [{"index": 0, "name": "NVIDIA GeForce RTX 3090", "avg_w": power, "samples": 9}]}


RESULT = {"steps": [_step(1, 112.0, 110.0, 280.0), _step(2, 100.0, 199.0), _step(4, 90.0, 350.0, 330.0),
                    _step(8, 70.0, 560.0)],
          "parameters": {"prompt_tokens": 512, "gen_tokens": 128, "min_stream_tps": 10.0, "parallel": 8},
          "recommended_sessions": 4, "build_info": "b1-abc1234"}


def _succeed(deployment, result=RESULT, node=None):
    op = Operation.objects.create(node=node or deployment.node, kind=Operation.BENCHMARK, target=deployment.name)
    op.apply_report(Operation.SUCCEEDED, "done", result=result)
    return op


def test_a_sweep_that_succeeded_is_stored_once_with_its_headline_figures():
    deployment = _deployment(_rig())
    op = _succeed(deployment)
    op.apply_report(Operation.SUCCEEDED, "again", result=RESULT)  # terminal: changes nothing
    bench = Benchmark.objects.get()
    assert (bench.deployment, bench.operation, bench.build) == (deployment, op, deployment.build)
    assert (bench.single_tps, bench.prompt_tps, bench.ttft_ms) == (112.0, 3900.0, 121.0)
    assert (bench.best_aggregate_tps, bench.best_concurrency) == (560.0, 8)
    assert (bench.recommended_sessions, bench.recommended_tps) == (4, 350.0)
    assert (bench.power_w, bench.power_source) == (330.0, Benchmark.NVML)  # at the recommended step
    assert bench.build_version == "version: 1 (abc1234) b1-abc1234"
    assert "power" not in bench.steps[0]  # only the checked fields are kept
    assert bench.parameters["ctx_size"] == 16384 and bench.parameters["n_gpu_layers"] == 99


def test_a_cpu_rig_uses_the_configured_wattage_and_bad_or_foreign_results_store_nothing():
    node = _rig(gpus=())
    deployment = _deployment(node, n_gpu_layers=0, parallel=2, ctx_size=1024)
    cpu_result = {**RESULT, "steps": [_step(1, 20.0, 20.0, None), _step(2, 15.0, 30.0, None)],
                  "recommended_sessions": 2}
    _succeed(deployment, cpu_result)
    bench = Benchmark.objects.get()
    assert (bench.power_w, bench.power_source) == (150, Benchmark.CONFIGURED)
    # 8 streams on a 2-slot server, or a failed operation: nothing.
    _succeed(deployment, RESULT)
    failed = Operation.objects.create(node=node, kind=Operation.BENCHMARK, target=deployment.name)
    failed.apply_report(Operation.FAILED, "no", result=cpu_result)
    _succeed(deployment, {**cpu_result, "deployment_id": deployment.pk + 1})  # a result about another deployment
    # Another rig naming this deployment: its operation's target is looked up on its own rig only.
    _succeed(deployment, cpu_result, node=_rig("beta"))
    assert Benchmark.objects.count() == 1


def test_the_button_is_for_operators_and_sends_the_sweep_to_the_rig(clients, django_capture_on_commit_callbacks):
    client, viewer_client, operator_client = clients
    deployment = _deployment(_rig())
    url = f"/deployments/{deployment.pk}/benchmarks/run/"
    assert client.post(url).status_code == 302 and "/login" in client.post(url)["Location"]
    assert viewer_client.post(url).status_code == 403
    assert operator_client.get(url).status_code == 405
    assert not Operation.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(url, follow=True)
    assert "Benchmark sent to alpha: 1 to 8 streams" in page(response)
    op = Operation.objects.get(kind=Operation.BENCHMARK)
    ((task, args, kwargs, _expires),) = [tuple(m)[:4] for m in queued_messages(deployment.node.queue)]
    assert task == protocol.AGENT_BENCHMARK_DEPLOYMENT and args == [op.pk]
    assert unsealed(deployment.node, kwargs) == {"deployment_id": deployment.pk, "request": {
        "prompt_tokens": 512, "gen_tokens": 128, "min_stream_tps": 10.0}}


def test_the_operator_may_set_the_lengths_and_bad_ones_are_refused(clients, django_capture_on_commit_callbacks):
    operator_client = clients[2]
    deployment = _deployment(_rig())
    url = f"/deployments/{deployment.pk}/benchmarks/run/"
    text = page(operator_client.post(url, {"prompt_tokens": "0", "gen_tokens": "x"}, follow=True))
    assert "Not started: Prompt tokens per stream: Ensure this value is greater than or equal to 1." in text
    assert "Generated tokens per stream: Enter a whole number." in text
    text = page(operator_client.post(url, {"prompt_tokens": "2000", "gen_tokens": "100"}, follow=True))
    assert "prompt 2000 + generation 100 tokens do not fit a slot of 2048 tokens (ctx-size 16384 / parallel 8)" in text
    assert not Operation.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        operator_client.post(url, {"prompt_tokens": "64", "gen_tokens": ""})
    ((_task, _args, kwargs, _expires),) = [tuple(m)[:4] for m in queued_messages(deployment.node.queue)]
    assert unsealed(deployment.node, kwargs)["request"] == {"prompt_tokens": 64, "gen_tokens": 128,
                                                            "min_stream_tps": 10.0}
    form = page(operator_client.get(f"/deployments/{deployment.pk}/"))
    assert 'id="bench-prompt" hx-preserve="true" name="prompt_tokens" min="1" max="16384" placeholder="512"' in form


@pytest.mark.parametrize("fields, reason", [
    ({"actual_state": "loading", "message": "loading model"}, "llama is loading: loading model"),
    ({"desired_state": "stopped", "actual_state": "stopped"}, "llama is stopped;"),
    ({"actual_state": "failed", "message": "crashed 5 times"}, "llama is failed: crashed 5 times"),
    ({"parallel": 64, "ctx_size": 8192, "prompt_tokens": 200}, "prompt 200 + generation 25 tokens do not fit a slot of 128"),
])
def test_a_server_that_cannot_be_benchmarked_is_refused_with_the_reason(operator_client, fields, reason, monkeypatch):
    from hosting import services

    if "prompt_tokens" in fields:  # a prompt length set for every benchmark that a small slot cannot hold
        monkeypatch.setattr(services, "BENCHMARK_REQUEST", {"prompt_tokens": fields.pop("prompt_tokens")})
    deployment = _deployment(_rig(), **fields)
    response = operator_client.post(f"/deployments/{deployment.pk}/benchmarks/run/", follow=True)
    assert reason in page(response)
    assert not Operation.objects.exists()


def test_the_page_shows_the_sweep_roofline_references_and_economics(clients):
    client, viewer_client, operator_client = clients
    node = _rig()
    profile = HardwareProfile.objects.create(name="3090 box")
    Part.objects.create(profile=profile, category=Part.GPU, description="RTX 3090", unit_price=Decimal("1200.00"),
                        quantity=2)
    node.profile = profile
    node.save(update_fields=["profile"])
    deployment = _deployment(node)
    _succeed(deployment)
    url = f"/deployments/{deployment.pk}/"
    assert 'id="bench-history"' not in page(operator_client.get(url))  # one run: the table shows it, no chart yet
    _succeed(deployment)
    assert "/login" in client.get(url)["Location"]
    viewer = page(viewer_client.get(url))
    assert "No benchmark" not in viewer and 'id="benchmark"' not in viewer  # viewers see it, without the button
    text = page(operator_client.get(url))
    assert 'id="benchmark"' in text
    assert '"bench-single">112.0</span> tok/s generation · 3900.0 tok/s prompt · 121 ms to first token' in text
    assert "560.0 tok/s at 8 streams" in text and "4 <span class=\"muted\">(350.0 tok/s together)" in text
    # 936 GB/s ÷ 4.936 GB of weights less the 8 MB header = 189.9 tok/s; 112 / 189.9 = 0.59.
    assert "189.9 tok/s = 936.0 GB/s ÷ <span title=\"the file less its header\">4.93 GB of weights read per token" in text and "measured / roofline = <strong id=\"bench-ratio\">0.59</strong>" in text
    assert "~115 tok/s — Llama 3 8B Q4_K_M, one RTX 3090" in text
    assert 'id="bench-history"' in text
    # 330 W × $0.15 = $0.0495/h; $2,400 ÷ (24 × 730 h) = $0.1370/h; $0.1865/h at 350 tok/s over 4 sessions.
    assert "330.0 W → 0.3300 kWh per hour × $0.1500 per kWh = $0.0495 per hour" in text
    assert "$2400.00 (3090 box) over 24 months × 730 h = $0.1370 per hour" in text
    assert "$0.1865 per hour" in text and "$0.1480 per million generated tokens" in text
    # ceil(($0.0495 + $2400/17520) per hour ÷ 3600 s ÷ $10 per MOR × 10^18 ÷ 4 sessions) wei/s, exact on hover.
    assert '<span title="1295043759513 wei/s">0.000001295043759513 MOR/s</span> per session' in text
    assert "per session-second" in text and 'id="bench-floor"' not in text
    assert page(operator_client.get(url, HTTP_HX_REQUEST="true")).count("Minimum bid") == 1  # the live partial
    assert "secret-key-123456" not in text


def test_the_economics_page_is_read_by_viewers_and_edited_by_operators(clients):
    client, viewer_client, operator_client = clients
    assert "/login" in client.get("/economics/")["Location"]
    viewer = page(viewer_client.get("/economics/"))
    assert "$0.1500 per kWh" in viewer and "economics-form" not in viewer
    assert viewer_client.post("/economics/", {"mor_usd": "1"}).status_code == 403
    data = {"electricity_usd_per_kwh": "0.30", "mor_usd": "2.5", "amortisation_months": "36", "cpu_rig_watts": "90"}
    assert operator_client.post("/economics/", data).status_code == 302
    row = EconomicsSettings.current()
    assert (row.electricity_usd_per_kwh, row.mor_usd, row.amortisation_months, row.cpu_rig_watts) == (
        Decimal("0.3"), Decimal("2.5"), 36, 90)
    bad = page(operator_client.post("/economics/", {**data, "mor_usd": "0", "amortisation_months": "0"}))
    assert "Ensure this value is greater than or equal to" in bad
    assert EconomicsSettings.current().mor_usd == Decimal("2.5")
