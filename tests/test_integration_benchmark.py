"""Benchmarking a deployment end to end: the panel's button, a real agent, a real llama-server, the stored sweep."""

import pytest
from django.template.defaultfilters import floatformat

from hosting.models import Benchmark, Build, Deployment
from models_catalog.models import RigFile
from nodes.models import Operation
from nodes.operations import start_operation
from tests import llama
from tests.gguf_model import write_tiny_llama
from tests.harness import stop_llama_servers_under, wait_until
from tests.helpers import free_port, make_node, page

pytestmark = pytest.mark.integration

SMALL = {"prompt_tokens": 32, "gen_tokens": 16, "min_stream_tps": 1.0}


@pytest.fixture
def alpha(rigs, tmp_path):
    node, token = make_node("alpha")
    agent = rigs.start("alpha", token, fake_nvml="2x3090")  # power readings from the fake NVML
    yield node, token, agent
    rigs.stop_all()
    stop_llama_servers_under(tmp_path)


def _finished(op, timeout=120):
    wait_until(lambda: Operation.objects.get(pk=op.pk).is_terminal, timeout=timeout, message=f"{op.kind} to end")
    return Operation.objects.get(pk=op.pk)


def _adopted(client, node, binary):
    client.post("/rigs/alpha/builds/adopt/", {"adopt-path": str(binary)})
    build = Build.objects.get(node=node, adopted=True, binary_path=str(binary))
    assert _finished(build.operation).status == Operation.SUCCEEDED
    return build


def _launch(client, node, name, rig_file, build, **changes):
    response = client.post("/rigs/alpha/deployments/new/",
                           llama.tiny_server_form(name, rig_file, build, free_port(), **changes))
    assert response.status_code == 302, response.content.decode()[-2000:]
    return Deployment.objects.get(node=node, name=name)


def _healthy(deployment):
    wait_until(lambda: Deployment.objects.get(pk=deployment.pk).is_healthy, timeout=60, message="healthy")


def test_it_benchmarks_a_healthy_server_and_refuses_a_stopped_one(alpha, operator_client, tmp_path, monkeypatch):
    from hosting import services

    node, _, _ = alpha
    monkeypatch.setattr(services, "BENCHMARK_REQUEST", SMALL)  # seconds, not minutes, on 2 CPU cores
    build = _adopted(operator_client, node, llama.server_binary())
    model = write_tiny_llama(tmp_path / "tiny-llama-F32.gguf")
    rig_file = RigFile.objects.create(node=node, path=str(model), size=model.stat().st_size)
    deployment = _launch(operator_client, node, "tiny", rig_file, build, ctx_size=512, parallel=2,
                         api_key="bench-key-12345678")
    _healthy(deployment)

    response = operator_client.post(f"/deployments/{deployment.pk}/benchmarks/run/", follow=True)
    assert "Benchmark sent to alpha" in page(response)
    op = Operation.objects.get(kind=Operation.BENCHMARK)
    assert op.target == "tiny"
    op = _finished(op, timeout=120)
    assert op.status == Operation.SUCCEEDED, op.message
    # Steps (1 and 2 streams) as progress; the last one may land after the outcome, which then keeps the one before.
    assert op.progress_total == 2 and op.progress_done in (1, 2)
    bench = wait_until(lambda: Benchmark.objects.filter(deployment=deployment).first(), message="benchmark row")
    assert [s["concurrency"] for s in bench.steps] == [1, 2]
    assert bench.steps[1]["generated"] == 2 * 16
    assert bench.single_tps > 0 and bench.prompt_tps > 0 and bench.ttft_ms > 0 and bench.best_aggregate_tps > 0
    assert bench.recommended_sessions in (1, 2) and bench.best_concurrency in (1, 2)
    assert bench.power_source == Benchmark.NVML and 60 <= bench.power_w <= 700  # two fake 3090s, 30-350 W each
    assert bench.build == build and bench.build_version  # the adopted binary's --version, and /props build_info
    assert bench.parameters["prompt_tokens"] == 32 and bench.parameters["parallel"] == 2
    assert "bench-key-12345678" not in str(op.result) + op.message  # the key stays on the rig

    text = page(operator_client.get(f"/deployments/{deployment.pk}/"))
    assert f'"bench-single">{floatformat(bench.single_tps, 1)}</span> tok/s generation' in text
    assert "recommended" in text and "runs on the CPU" in text  # n-gpu-layers 0: no roofline
    # The fake GPUs' draw at $0.15 per kWh and MOR at $10, shared by the recommended sessions, in exact wei.
    from hosting.benchmarks import economics_of

    wei = economics_of(bench)["bid_wei"]
    assert isinstance(wei, int) and wei >= 10_000_000_000
    assert f'title="{wei} wei/s">' in text and "MOR/s</span> per session" in text

    # Numbers the panel would not send are refused on the rig too, before any request reaches the server.
    bad = start_operation(node, Operation.BENCHMARK, target="tiny",
                          payload={"deployment_id": deployment.pk, "request": {"prompt_tokens": 10**6}})
    bad = _finished(bad)
    assert bad.status == Operation.FAILED
    assert bad.message == "refused on the rig: prompt_tokens must be between 1 and 16384 (got 1000000)"

    # Stopped: refused on the panel with the reason, no operation sent.
    operator_client.post(f"/deployments/{deployment.pk}/stop/")
    wait_until(lambda: Deployment.objects.get(pk=deployment.pk).actual_state == "stopped", message="stopped")
    response = operator_client.post(f"/deployments/{deployment.pk}/benchmarks/run/", follow=True)
    assert "Not started: tiny is stopped; benchmark a healthy server" in page(response)
    assert Operation.objects.filter(kind=Operation.BENCHMARK).count() == 2
    assert Benchmark.objects.count() == 1


def test_a_server_that_is_not_healthy_on_the_rig_fails_the_benchmark_with_the_reason(alpha, operator_client, tmp_path):
    node, _, _ = alpha
    slow = llama.slow_server(tmp_path / "llama-server-slow", 60)
    build = _adopted(operator_client, node, slow)
    model = write_tiny_llama(tmp_path / "tiny-llama-F32.gguf")
    rig_file = RigFile.objects.create(node=node, path=str(model), size=model.stat().st_size)
    deployment = _launch(operator_client, node, "slow", rig_file, build)
    wait_until(lambda: Deployment.objects.get(pk=deployment.pk).actual_state in ("starting", "loading"),
               message="starting")

    response = operator_client.post(f"/deployments/{deployment.pk}/benchmarks/run/", follow=True)
    assert "Not started: slow is starting" in page(response)
    # A panel that raced the rig (it still thought the server healthy): the rig refuses with its own reason.
    op = start_operation(node, Operation.BENCHMARK, payload={"deployment_id": deployment.pk, "request": SMALL},
                         target="slow")
    op = _finished(op)
    assert op.status == Operation.FAILED
    assert op.message.startswith("the server is starting: launched pid") and "not benchmarked" in op.message
    other = start_operation(node, Operation.BENCHMARK, payload={"deployment_id": 99999, "request": SMALL})
    assert _finished(other).message == "deployment 99999 is not on this rig"
    assert not Benchmark.objects.exists()
