"""Publishing a deployment on the Morpheus marketplace: the "Sell on Morpheus" form and its refusals, the models-config
entry it becomes (checked against the router's schema with the deployment's real URL), the restart asked for first,
the reload preferred, the fleet checklist and its query count, and the Marketplace page's live part.

Messages to rigs go to this process's memory:// broker; each test reads what its rig's queue received."""

import json
import socket

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from hosting.models import Benchmark, Build, Deployment
from marketplace import checklist, publishing
from marketplace.models import Listing, Router
from models_catalog.models import RigFile
from nodes.agent import protocol, routermodels
from nodes.agent.router import validate_models_config, write_models_config
from nodes.models import Operation
from nodes.reports import clean_router
from tests.helpers import free_port, make_node, page, queued_messages, unsealed
from tests.routerkit import StubProcess, write_rig_folder

pytestmark = pytest.mark.django_db

KEY = "sk-publish-Secret-5e1d"
WALLET = "0x" + "12" * 20
MODEL = "0x" + "ab" * 32
OTHER = "0x" + "cd" * 32
HTMX = {"HTTP_HX_REQUEST": "true"}


def snapshot(**changes):
    """A rig's `router` report as the panel keeps it (after clean_router)."""
    data = {"state": "healthy", "pid": 4242, "message": "healthy", "log": "", "restarts": 0, "version": "v7.11.0",
            "health": "healthy", "models_health": {}, "wallet": WALLET, "mor_wei": str(3 * 10**18),
            "eth_wei": str(10**16), "provider": {"address": WALLET, "endpoint": "rig.example.com:3333",
                                                  "stake": str(2 * 10**17)},
            "models": [{"id": MODEL, "name": "tiny-llama", "stake": str(10**17)}], "bids": [], "open_sessions": 2,
            "config_models": [], "unmanaged_keys": ["WALLET_PRIVATE_KEY"], "network": "testnet",
            "binary": "/opt/morpheus/proxy-router", "at": 1_790_000_000.0, "error": None, "proxy_listening": True,
            "reload_supported": None}
    data.update(changes)
    return clean_router(data)


def make_router(node, **changes):
    state = changes.pop("state", "healthy")
    return Router.objects.create(node=node, binary_path="/opt/morpheus/proxy-router", state=state,
                                 snapshot=snapshot(state=state, **changes), reported_at=timezone.now())


def make_deployment(node, name="tiny", port=8080, **fields):
    build = Build.objects.filter(node=node).first() or Build.objects.create(
        node=node, source="/src", ref="b1", status=Build.READY, is_default=True, binary_path="/opt/llama-server")
    rig_file = RigFile.objects.create(node=node, path=f"/models/{name}-Q4_K_M.gguf", size=1)
    values = {"ctx_size": 4096, "parallel": 4, "n_gpu_layers": 0, "api_key": KEY, "actual_state": "healthy", **fields}
    return Deployment.objects.create(node=node, name=name, model_file=rig_file, build=build, port=port, **values)


def benchmark(deployment, recommended):
    return Benchmark.objects.create(deployment=deployment, node=deployment.node, single_tps=20, prompt_tps=100,
                                    ttft_ms=50, best_aggregate_tps=60, best_concurrency=4,
                                    recommended_sessions=recommended, recommended_tps=55)


@pytest.fixture
def alpha():
    node, _token = make_node("alpha", last_seen=timezone.now(), telemetry_interval=5.0)
    queued_messages(node.queue)
    yield node
    queued_messages(node.queue)


@pytest.fixture
def tiny(alpha):
    return make_deployment(alpha)


def sent(node):
    """The router_apply commands waiting for the rig, their arguments with the secrets opened as the rig opens them."""
    return [(m, unsealed(node, m.kwargs)) for m in queued_messages(node.queue) if m.task == protocol.AGENT_ROUTER_APPLY]


def form(**changes):
    return {"model": MODEL, "model_id": "", "model_name": "tiny-llama", "concurrent_slots": 3,
            "capacity_policy": "simple", **changes}


def publish(client, deployment, capture, **changes):
    with capture(execute=True):
        return client.post(f"/deployments/{deployment.pk}/marketplace/publish/", form(**changes))


# --- the entry ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("host, url", [
    ("127.0.0.1", "http://127.0.0.1:8080/v1/chat/completions"),
    ("0.0.0.0", "http://127.0.0.1:8080/v1/chat/completions"),  # the router on the same rig: loopback
    ("10.1.2.3", "http://10.1.2.3:8080/v1/chat/completions"),  # the one address the server listens on
    ("::", "http://[::1]:8080/v1/chat/completions"),
    ("fd00::5", "http://[fd00::5]:8080/v1/chat/completions"),
])
def test_the_entry_points_at_the_deployment_as_the_router_on_its_rig_reaches_it(alpha, host, url):
    deployment = make_deployment(alpha, host=host)
    Listing.objects.create(deployment=deployment, model_id=MODEL, model_name="tiny-llama", concurrent_slots=2)

    entries = publishing.config_entries(alpha)

    assert entries == [{"modelId": MODEL, "modelName": "tiny-llama", "apiType": "openai", "apiUrl": url,
                        "concurrentSlots": 2, "capacityPolicy": "simple", "apiKey": KEY}]
    validate_models_config({"models": entries})


def test_the_slots_come_from_the_latest_benchmark_else_the_servers_parallel_slots(alpha, tiny):
    Listing.objects.create(deployment=tiny, model_id=MODEL, model_name="tiny-llama")
    assert publishing.config_entries(alpha)[0]["concurrentSlots"] == 4  # --parallel 4, no benchmark yet
    benchmark(tiny, 2)
    benchmark(tiny, 3)
    assert publishing.config_entries(alpha)[0]["concurrentSlots"] == 3
    assert publishing.recommended_slots(tiny) == 3


def test_a_deployment_without_a_key_gets_no_api_key_and_the_file_the_rig_writes_passes_the_schema(alpha, tmp_path):
    open_one = make_deployment(alpha, name="open", port=8081, api_key="")
    keyed = make_deployment(alpha, name="keyed", port=8082)
    Listing.objects.create(deployment=open_one, model_id=MODEL, model_name="open")
    Listing.objects.create(deployment=keyed, model_id=OTHER, model_name="keyed")

    entries = publishing.config_entries(alpha)

    assert "apiKey" not in entries[0] and entries[1]["apiKey"] == KEY
    document = write_models_config(tmp_path / "models-config.json", entries)
    assert json.loads((tmp_path / "models-config.json").read_text()) == document
    assert [e["apiUrl"] for e in document["models"]] == ["http://127.0.0.1:8081/v1/chat/completions",
                                                         "http://127.0.0.1:8082/v1/chat/completions"]


def test_the_key_is_sealed_for_the_rig_and_reported_back_only_as_set(alpha):
    assert "apiKey" in protocol.SECRET_FIELDS
    reported = routermodels.reported_models([{"modelId": MODEL, "apiKey": KEY}, {"modelId": OTHER}])
    assert reported == [{"modelId": MODEL, "apiKey": "set"}, {"modelId": OTHER}]
    # A rig that reports the key anyway: the panel keeps "set", never the value.
    entry = {"modelId": MODEL.upper().replace("0X", "0x"), "modelName": "m", "apiType": "openai",
             "apiUrl": "http://127.0.0.1:8080/v1/chat/completions", "apiKey": KEY, "parameters": {"x": KEY}}
    clean = snapshot(config_models=[entry])
    assert clean["config_models"] == [{"modelId": MODEL, "modelName": "m", "apiType": "openai",
                                       "apiUrl": "http://127.0.0.1:8080/v1/chat/completions", "apiKey": "set"}]
    assert KEY not in json.dumps(clean)


@pytest.mark.parametrize("changes, why", [
    ({"proxy_listening": "yes"}, "proxy_listening"),
    ({"reload_supported": 1}, "reload_supported"),
    ({"config_models": ["x"]}, "config_models entries must be objects"),
    ({"config_models": [{"modelId": MODEL}]}, "modelName is missing"),
])
def test_a_bad_publishing_field_in_a_report_is_refused(changes, why):
    from nodes.reports import ReportError

    with pytest.raises(ReportError, match=why):
        snapshot(**changes)


# --- the rig side, alone ---------------------------------------------------------------------------------------------
def test_the_proxy_port_check_connects_to_the_routers_consumer_port(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        (tmp_path / ".env").write_text(f"PROXY_ADDRESS=0.0.0.0:{port}\n")
        assert routermodels.proxy_listening(tmp_path) is True
    assert routermodels.proxy_listening(tmp_path) is False
    (tmp_path / ".env").write_text("WALLET_PRIVATE_KEY=0x1\n")
    assert routermodels.proxy_listening(tmp_path) is None


def test_only_a_change_of_the_models_alone_is_reloaded():
    old = {"network": "testnet", "binary": "/opt/r", "env": {"A": "1"}, "models": []}
    assert routermodels.models_only(old, {**old, "models": [{"modelId": MODEL}]})
    assert not routermodels.models_only(old, dict(old))
    assert not routermodels.models_only(old, {**old, "env": {"A": "2"}, "models": [{"modelId": MODEL}]})
    assert not routermodels.models_only(None, old)
    assert routermodels.reload_supported({"version": "v1", "supported": True}, "v1") is True
    assert routermodels.reload_supported({"version": "v1", "supported": False}, "v2") is None  # a new release


@pytest.mark.parametrize("reload", [True, False])
def test_the_client_reloads_where_the_router_can_and_says_when_it_cannot(tmp_path, reload):
    from nodes.agent.router import AdminClient, RouterError

    web, proxy = free_port(), free_port()
    folder = write_rig_folder(tmp_path / "router", web, proxy, extra_env={"ROUTERSTUB_RELOAD": "1"} if reload else {})
    stub = StubProcess(folder, web, proxy).start()
    try:
        client = AdminClient(f"127.0.0.1:{web}", folder / ".cookie")
        (folder / "models-config.json").write_text(json.dumps({"models": [{
            "modelId": MODEL, "modelName": "m", "apiType": "openai",
            "apiUrl": "http://127.0.0.1:9/v1/chat/completions"}]}))
        if reload:
            assert client.reload_models() == {"added": [MODEL], "removed": [], "health_sweep_queued": True}
            assert routermodels.reload_models(client)[0] == "reloaded"
            (folder / "models-config.json").write_text(json.dumps({"models": [{"modelId": "nope"}]}))
            outcome, why = routermodels.reload_models(client)
            assert outcome == "failed" and "modelName is required" in why
        else:
            with pytest.raises(RouterError) as caught:
                client.reload_models()
            assert caught.value.kind == "not_found"
            assert routermodels.reload_models(client)[0] == "unsupported"
    finally:
        stub.stop()


# --- who may do what ------------------------------------------------------------------------------------------------
def test_anonymous_is_sent_to_log_in_and_a_viewer_sees_but_cannot_publish(viewer_client, alpha, tiny,
                                                                         django_capture_on_commit_callbacks):
    make_router(alpha)
    client = Client()  # viewer_client is the `client` fixture, logged in
    for url in (f"/deployments/{tiny.pk}/marketplace/publish/", f"/deployments/{tiny.pk}/marketplace/unpublish/",
                "/marketplace/", "/rigs/alpha/marketplace/apply/"):
        response = client.post(url, form())
        assert response.status_code == 302 and "/login/" in response["Location"]
    text = page(viewer_client.get(f"/deployments/{tiny.pk}/"))
    assert 'id="sell"' in text and 'id="publish-form"' not in text
    assert publish(viewer_client, tiny, django_capture_on_commit_callbacks).status_code == 403
    Listing.objects.create(deployment=tiny, model_id=MODEL, model_name="tiny-llama")
    assert viewer_client.get(f"/deployments/{tiny.pk}/marketplace/unpublish/").status_code == 403
    assert viewer_client.post("/rigs/alpha/marketplace/apply/").status_code == 403
    assert viewer_client.get("/marketplace/").status_code == 200
    assert Listing.objects.get().model_name == "tiny-llama" and sent(alpha) == []


# --- publishing ----------------------------------------------------------------------------------------------------
def test_publishing_needs_a_router_on_the_rig_and_says_how_to_start_one(operator_client, alpha, tiny,
                                                                       django_capture_on_commit_callbacks):
    text = page(operator_client.get(f"/deployments/{tiny.pk}/"))
    assert 'id="sell-no-router"' in text and 'href="/rigs/alpha/marketplace/"' in text
    text = page(publish(operator_client, tiny, django_capture_on_commit_callbacks))
    assert "alpha has no proxy-router yet: start one on the rig's Marketplace page" in text
    assert not Listing.objects.exists() and sent(alpha) == []


def test_publishing_to_a_stopped_router_sends_the_entry_with_its_key_sealed(operator_client, alpha, tiny,
                                                                           django_capture_on_commit_callbacks):
    make_router(alpha, state="stopped", pid=None)
    text = page(operator_client.get(f"/deployments/{tiny.pk}/"))
    assert 'id="publish-form"' in text and 'value="3"' not in text  # no benchmark: the server's 4 slots
    assert 'name="concurrent_slots" value="4" min="1" max="4"' in text
    assert f'<option value="{MODEL}" selected>tiny-llama' in text  # the rig's one registered model
    assert 'name="model_name" value="tiny-Q4_K_M"' in text  # from the model file: no alias

    response = publish(operator_client, tiny, django_capture_on_commit_callbacks)

    assert response.status_code == 302 and response["Location"] == f"/deployments/{tiny.pk}/"
    listing = Listing.objects.get()
    assert (listing.model_id, listing.model_name, listing.concurrent_slots) == (MODEL, "tiny-llama", 3)
    [(message, args)] = sent(alpha)
    assert KEY not in json.dumps(message.envelope) and "$sealed" in json.dumps(message.envelope)
    assert args["config"]["models"] == [{"modelId": MODEL, "modelName": "tiny-llama", "apiType": "openai",
                                         "apiUrl": "http://127.0.0.1:8080/v1/chat/completions",
                                         "concurrentSlots": 3, "capacityPolicy": "simple", "apiKey": KEY}]
    assert "restart" not in args and "reload_only" not in args
    assert Operation.objects.get().kind == Operation.ROUTER_APPLY


def test_a_typed_model_id_is_stored_lowercase(operator_client, alpha, tiny, django_capture_on_commit_callbacks):
    make_router(alpha, state="stopped", pid=None)
    publish(operator_client, tiny, django_capture_on_commit_callbacks, model="", model_id=" " + OTHER.upper()
            .replace("0X", "0x") + " ")
    assert Listing.objects.get().model_id == OTHER


@pytest.mark.parametrize("changes, why", [
    ({"model": "", "model_id": "0x1234"}, "is not an on-chain model id: 0x and 64 hex digits"),
    ({"model": "", "model_id": "ab" * 32}, "is not an on-chain model id"),
    ({"model": "", "model_id": ""}, "Pick a model or type its id"),
    ({"model": OTHER}, "Select a valid choice"),  # not one of the rig's registered models: typed, then
    ({"concurrent_slots": 5}, "less than or equal to 4"),
    ({"concurrent_slots": 0}, "greater than or equal to 1"),
    ({"capacity_policy": "greedy"}, "Select a valid choice"),
    ({"model_name": ""}, "This field is required"),
])
def test_bad_input_is_refused_before_anything_is_saved_or_sent(operator_client, alpha, tiny, changes, why,
                                                               django_capture_on_commit_callbacks):
    make_router(alpha, state="stopped", pid=None)
    text = page(publish(operator_client, tiny, django_capture_on_commit_callbacks, **changes))
    assert why in text
    assert not Listing.objects.exists() and sent(alpha) == [] and not Operation.objects.exists()


def test_one_model_is_served_by_one_deployment_per_rig(operator_client, alpha, tiny,
                                                       django_capture_on_commit_callbacks):
    make_router(alpha, state="stopped", pid=None)
    other = make_deployment(alpha, name="other", port=8081)
    Listing.objects.create(deployment=other, model_id=MODEL, model_name="other")
    text = page(publish(operator_client, tiny, django_capture_on_commit_callbacks))
    assert f"model {MODEL} is already served by other on alpha" in text
    assert Listing.objects.count() == 1 and sent(alpha) == []


def test_a_running_router_is_not_restarted_before_the_provider_agrees(operator_client, alpha, tiny,
                                                                     django_capture_on_commit_callbacks):
    make_router(alpha, open_sessions=2)
    text = page(operator_client.get(f"/deployments/{tiny.pk}/"))
    assert 'id="sell-restart-warning"' in text and "cuts its <strong>2</strong> open sessions." in text

    text = page(publish(operator_client, tiny, django_capture_on_commit_callbacks))
    assert "applying restarts it and cuts its 2 open session(s)" in text
    assert not Listing.objects.exists() and sent(alpha) == []

    response = publish(operator_client, tiny, django_capture_on_commit_callbacks, confirm_restart="on")
    assert response.status_code == 302
    [(_message, args)] = sent(alpha)
    assert "reload_only" not in args and "restart" not in args  # the rig reloads if it can, else restarts
    assert [m["modelId"] for m in args["config"]["models"]] == [MODEL]


def test_a_router_that_reloads_gets_the_entry_without_a_question_and_never_restarts(
        operator_client, alpha, tiny, django_capture_on_commit_callbacks):
    make_router(alpha, reload_supported=True)
    assert 'id="sell-restart-warning"' not in page(operator_client.get(f"/deployments/{tiny.pk}/"))
    assert publish(operator_client, tiny, django_capture_on_commit_callbacks).status_code == 302
    [(_message, args)] = sent(alpha)
    assert args["reload_only"] is True and "restart" not in args


def test_publish_now_apply_later_then_apply_from_the_rigs_page(operator_client, alpha, tiny,
                                                               django_capture_on_commit_callbacks):
    make_router(alpha, open_sessions=1, bids=[{"id": OTHER, "model_id": MODEL, "price_per_second": "10000000000"}])
    response = publish(operator_client, tiny, django_capture_on_commit_callbacks, later="1")
    assert response.status_code == 302 and Listing.objects.exists() and sent(alpha) == []

    text = page(operator_client.get("/rigs/alpha/marketplace/"))
    assert 'data-check="apply-pending"' in text and 'id="apply-form"' in text and 'id="apply-restart-warning"' in text
    with django_capture_on_commit_callbacks(execute=True):
        operator_client.post("/rigs/alpha/marketplace/apply/")
    assert sent(alpha) == []  # the restart was not agreed to
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post("/rigs/alpha/marketplace/apply/", {"confirm_restart": "on"})
    assert response.status_code == 302
    [(_message, args)] = sent(alpha)
    assert [m["modelId"] for m in args["config"]["models"]] == [MODEL]


def test_nothing_is_sent_when_the_router_runs_with_the_entries_already(operator_client, alpha, tiny,
                                                                      django_capture_on_commit_callbacks):
    listing = Listing.objects.create(deployment=tiny, model_id=MODEL, model_name="tiny-llama", concurrent_slots=3)
    make_router(alpha, config_models=routermodels.reported_models([publishing.entry_for(listing)]))
    response = publish(operator_client, tiny, django_capture_on_commit_callbacks)  # the same values again
    assert response.status_code == 302 and sent(alpha) == []


def test_the_routers_own_start_form_sends_the_published_entries_too(operator_client, alpha, tiny,
                                                                    django_capture_on_commit_callbacks):
    make_router(alpha, state="stopped", pid=None)
    Listing.objects.create(deployment=tiny, model_id=MODEL, model_name="tiny-llama")
    with django_capture_on_commit_callbacks(execute=True):
        operator_client.post("/rigs/alpha/marketplace/", {"binary": "/opt/morpheus/proxy-router", "network": "testnet",
                                                          "proxy_port": 3333, "web_port": 8082})
    [(_message, args)] = sent(alpha)
    assert [m["apiKey"] for m in args["config"]["models"]] == [KEY]


def test_deleting_a_published_deployment_warns_that_the_router_keeps_its_entry_until_applied(operator_client, alpha,
                                                                                           tiny):
    url = f"/deployments/{tiny.pk}/delete/"
    assert 'id="delete-listing"' not in page(operator_client.get(url))
    Listing.objects.create(deployment=tiny, model_id=MODEL, model_name="tiny-llama")
    text = page(operator_client.get(url))
    assert 'id="delete-listing"' in text and "published on Morpheus as <strong>tiny-llama</strong>" in text
    assert "/rigs/alpha/marketplace/" in text.split('id="delete-listing"')[1]


def test_unpublishing_asks_first_then_removes_the_entry(operator_client, alpha, tiny,
                                                        django_capture_on_commit_callbacks):
    listing = Listing.objects.create(deployment=tiny, model_id=MODEL, model_name="tiny-llama")
    make_router(alpha, open_sessions=3, config_models=_in_force(listing))
    assert 'id="unpublish-link"' in page(operator_client.get(f"/deployments/{tiny.pk}/"))
    text = page(operator_client.get(f"/deployments/{tiny.pk}/marketplace/unpublish/"))
    assert "cuts its <strong>3</strong> open sessions." in text and 'id="unpublish-submit"' in text

    with django_capture_on_commit_callbacks(execute=True):
        text = page(operator_client.post(f"/deployments/{tiny.pk}/marketplace/unpublish/"))
    assert "cuts its 3 open session(s)" in text and Listing.objects.exists() and sent(alpha) == []

    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(f"/deployments/{tiny.pk}/marketplace/unpublish/", {"confirm_restart": "on"})
    assert response.status_code == 302 and not Listing.objects.exists()
    [(_message, args)] = sent(alpha)
    assert args["config"]["models"] == []


# --- the checklist -------------------------------------------------------------------------------------------------
def _keys(found):
    return [(item.ok, item.key) for item in found.items]


def _in_force(listing, **entry):
    return routermodels.reported_models([{**publishing.entry_for(listing), **entry}])


BID = {"id": OTHER, "model_id": MODEL, "price_per_second": "10000000000"}


def test_a_rig_selling_a_healthy_published_deployment_is_ready(alpha, tiny):
    listing = Listing.objects.create(deployment=tiny, model_id=MODEL, model_name="tiny-llama")
    router = make_router(alpha, bids=[BID], config_models=_in_force(listing), models_health={MODEL: "healthy"})

    found = checklist.for_rig(alpha, router)

    assert found.ready and _keys(found) == [(True, "router"), (True, "proxy-port"), (True, "listing-ok")]


@pytest.mark.parametrize("router_changes, deployment_changes, expected", [
    ({"bids": [BID], "config_models": []}, {}, ["bid-without-config", "apply-pending"]),
    ({"bids": []}, {}, ["config-without-bid"]),
    ({"bids": [BID]}, {"actual_state": "failed"}, ["bid-unhealthy"]),
    ({"bids": [BID]}, {"desired_state": "stopped", "actual_state": "stopped"}, ["bid-unhealthy"]),
    ({"bids": []}, {"actual_state": "backoff"}, ["config-without-bid", "endpoint-down"]),
    ({"bids": [BID], "models_health": {MODEL: "unhealthy"}}, {}, ["endpoint-down"]),
    ({"bids": [BID], "proxy_listening": False}, {}, ["proxy-port"]),
    ({"bids": [BID], "state": "backoff"}, {}, ["router"]),
    ({"bids": [BID], "state": "degraded"}, {}, ["router"]),
    ({"bids": [BID], "error": {"kind": "unauthorized", "reason": "401"}}, {}, ["admin-api"]),
])
def test_each_mismatch_is_one_problem_in_a_plain_sentence(alpha, tiny, router_changes, deployment_changes,
                                                          expected):
    Deployment.objects.filter(pk=tiny.pk).update(**deployment_changes)
    listing = Listing.objects.select_related("deployment__node").get(
        pk=Listing.objects.create(deployment=tiny, model_id=MODEL, model_name="tiny-llama").pk)
    changes = {"config_models": _in_force(listing), **router_changes}
    router = make_router(alpha, **changes)

    found = checklist.for_rig(alpha, router)

    assert [item.key for item in found.problems] == expected and not found.ready
    assert all(item.text.endswith((".", ")")) or "401" in item.text for item in found.items)


def test_a_changed_listing_and_an_entry_no_longer_published_are_apply_pending(alpha, tiny):
    listing = Listing.objects.create(deployment=tiny, model_id=MODEL, model_name="tiny-llama", concurrent_slots=2)
    stale = _in_force(listing, concurrentSlots=4) + [{"modelId": OTHER, "modelName": "gone", "apiType": "openai",
                                                      "apiUrl": "http://127.0.0.1:9/v1/chat/completions"}]
    router = make_router(alpha, bids=[BID], config_models=stale)
    found = checklist.for_rig(alpha, router)
    assert [item.key for item in found.problems] == ["config-not-published", "apply-pending"]
    texts = " ".join(item.text for item in found.problems)
    assert "changed since the router's models-config was written" in texts and "no longer published" in texts


def test_a_rig_with_a_router_and_nothing_published_is_not_ready(alpha):
    found = checklist.for_rig(alpha, make_router(alpha))
    assert [item.key for item in found.problems] == ["nothing-published"] and not found.ready
    found = checklist.rig_checklist(alpha, None, [])
    assert found.items == [] and not found.ready


def _rigs(numbers):
    for n in numbers:
        node, _ = make_node(f"rig{n}", last_seen=timezone.now())
        deployment = make_deployment(node, name="d", port=8080)
        benchmark(deployment, 2)
        listing = Listing.objects.create(deployment=deployment, model_id=MODEL, model_name="m")
        make_router(node, bids=[BID], config_models=_in_force(listing), models_health={MODEL: "healthy"})


def test_the_fleet_page_shows_every_rig_in_the_same_number_of_queries(viewer_client):
    _rigs(range(2))
    with CaptureQueriesContext(connection) as two:
        text = page(viewer_client.get("/marketplace/"))
    assert text.count('class="ok ready-to-sell"') == 2 and 'id="ready-to-sell-rig1"' in text
    _rigs(range(2, 10))
    with CaptureQueriesContext(connection) as ten:
        text = page(viewer_client.get("/marketplace/"))
    assert text.count('class="ok ready-to-sell"') == 10 and 'id="ready-to-sell-rig9"' in text
    assert len(ten) == len(two), [q["sql"] for q in ten.captured_queries]
    assert 'href="/marketplace/"' in text  # in the navigation


def test_the_key_shows_on_no_page(operator_client, alpha, tiny, django_capture_on_commit_callbacks):
    listing = Listing.objects.create(deployment=tiny, model_id=MODEL, model_name="tiny-llama")
    make_router(alpha, bids=[BID], config_models=_in_force(listing))
    pages = [page(operator_client.get(url)) for url in (
        f"/deployments/{tiny.pk}/", f"/deployments/{tiny.pk}/marketplace/publish/", "/rigs/alpha/marketplace/",
        f"/deployments/{tiny.pk}/marketplace/unpublish/", "/marketplace/")]
    pages.append(page(operator_client.get("/rigs/alpha/marketplace/", **HTMX)))
    assert all(KEY not in text for text in pages)
    assert json.dumps(Router.objects.get().snapshot).count(KEY) == 0


# --- the live page --------------------------------------------------------------------------------------------------
def test_the_marketplace_page_polls_its_live_part(viewer_client, alpha, tiny):
    listing = Listing.objects.create(deployment=tiny, model_id=MODEL, model_name="tiny-llama")
    router = make_router(alpha, bids=[BID], config_models=_in_force(listing), models_health={MODEL: "healthy"})
    text = page(viewer_client.get("/rigs/alpha/marketplace/"))
    assert 'id="router-live" hx-get="/rigs/alpha/marketplace/"' in text and "every 5s" in text
    assert 'id="ready-to-sell-alpha"' in text and 'data-deployment="tiny"' in text

    Router.objects.filter(pk=router.pk).update(state="failed", snapshot=snapshot(
        state="failed", pid=None, message="crashed 5 times", config_models=_in_force(listing)))
    live = page(viewer_client.get("/rigs/alpha/marketplace/", **HTMX))
    assert "<html" not in live and 'id="router-live"' not in live  # only the inside, swapped in place
    assert 'id="router-state">failed' in live and "The proxy-router is failed: crashed 5 times." in live
    assert 'id="ready-to-sell-alpha"' not in live and 'id="router-form"' not in live
