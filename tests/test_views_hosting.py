"""The hosting pages: llama.cpp builds of a rig, deployments (hosted models), and the periodic reconcile fan-out.

Messages to rigs go to this process's memory:// broker; each test reads what its rig's queue received.
"""


import pytest
from django.utils import timezone

from hosting.models import Build, Deployment
from hosting.tasks import reconcile_deployments
from models_catalog.models import RigFile
from nodes.agent import protocol
from nodes.models import Operation
from tests.helpers import make_node, page, queued_messages, unsealed

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}
BINARY = "/var/lib/morpheus-agent/builds/1/llama-server"
MODEL = "/var/lib/morpheus-agent/models/org__Tiny-GGUF/tiny-Q8_0.gguf"
TWO_3090S = {"gpus": [{"index": 0, "name": "NVIDIA GeForce RTX 3090", "compute_capability": "8.6"},
                      {"index": 1, "name": "NVIDIA GeForce RTX 3090", "compute_capability": "8.6"}]}



def drain(queue):
    """(task name, args, kwargs, expires) of every message waiting on `queue` in the memory:// broker."""
    return [tuple(m)[:4] for m in queued_messages(queue)]


@pytest.fixture
def alpha():
    node, _token = make_node("alpha", hardware={"gpus": [], "hostname": "alpha-box"}, last_seen=timezone.now())
    drain(node.queue)
    yield node
    drain(node.queue)


@pytest.fixture
def ready_build(alpha):
    return Build.objects.create(node=alpha, source="/src/llama.cpp", ref="b1", status=Build.READY, is_default=True,
                                binary_path=BINARY, version="0.5.0 (build 1, abc1234)", commit="abc1234")


@pytest.fixture
def rig_file(alpha):
    return RigFile.objects.create(node=alpha, path=MODEL, size=4 << 20)


def form_data(ready_build, rig_file, **changes):
    data = {"name": "tiny", "model_file": rig_file.pk, "build": ready_build.pk, "host": "127.0.0.1", "port": 8080,
            "ctx_size": 4096, "n_gpu_layers": 0, "parallel": 2, "flash_attn": "off", "cache_type_k": "f16",
            "cache_type_v": "f16", "extra_flags_text": "--no-webui"}
    return {**data, **changes}


@pytest.fixture
def deployment(alpha, ready_build, rig_file):
    return Deployment.objects.create(node=alpha, name="tiny", model_file=rig_file, build=ready_build, port=8080,
                                     ctx_size=4096, parallel=2, n_gpu_layers=0)


# --- builds: who sees and does what --------------------------------------------------------------------
def test_it_shows_a_rigs_builds_and_the_build_and_adopt_forms_to_an_operator(operator_client, ready_build):
    content = page(operator_client.get("/rigs/alpha/builds/"))
    assert "0.5.0 (build 1, abc1234)" in content and "default" in content
    assert 'id="build-form"' in content and 'id="adopt-form"' in content
    assert "https://github.com/ggml-org/llama.cpp" in content  # the default source, prefilled


def test_it_shows_builds_to_a_viewer_without_any_form(viewer_client, ready_build):
    response = viewer_client.get("/rigs/alpha/builds/")
    assert response.status_code == 200
    content = page(response)
    assert "0.5.0 (build 1, abc1234)" in content
    assert "<form" not in content.split("<main", 1)[1]  # the log-out form sits above <main>
    assert "delete…" not in content


def test_it_refuses_a_viewers_forged_build_adopt_and_deployment_posts(viewer_client, alpha, ready_build, deployment,
                                                                      django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        posts = [
            viewer_client.post("/rigs/alpha/builds/", {"build-source": "/src/llama.cpp", "build-ref": "b1",
                                                       "build-backend": "auto"}),
            viewer_client.post("/rigs/alpha/builds/adopt/", {"adopt-path": "/usr/local/bin/llama-server"}),
            viewer_client.post(f"/builds/{ready_build.pk}/default/"),
            viewer_client.post(f"/builds/{ready_build.pk}/delete/"),
            viewer_client.post("/rigs/alpha/deployments/new/", {"name": "x"}),
            viewer_client.post(f"/deployments/{deployment.pk}/stop/"),
            viewer_client.post(f"/deployments/{deployment.pk}/delete/"),
        ]
    assert [r.status_code for r in posts] == [403] * len(posts)
    assert Build.objects.count() == 1 and Deployment.objects.count() == 1
    assert not Operation.objects.exists()
    assert drain(alpha.queue) == []


# --- starting a build -------------------------------------------------------------------------------------
def test_it_starts_a_build_and_sends_it_to_the_rig(operator_client, operator, alpha,
                                                   django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post("/rigs/alpha/builds/", {
            "build-source": "/src/llama.cpp", "build-ref": "b6680", "build-backend": "auto",
            "build-options": "-DGGML_CUDA_F16=on\n\nLLAMA_CURL=OFF"})
    build = Build.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/builds/{build.pk}/"
    assert (build.status, build.ref, build.options) == (Build.QUEUED, "b6680", {"GGML_CUDA_F16": "on",
                                                                                "LLAMA_CURL": "OFF"})
    assert (build.operation.kind, build.operation.requested_by) == (Operation.BUILD_LLAMA, operator)
    [(task, args, kwargs, expires)] = drain(alpha.queue)
    assert (task, args) == (protocol.AGENT_BUILD_LLAMA, [build.operation.pk])
    assert kwargs["build_id"] == build.pk and expires is not None
    assert kwargs["request"] == {"build_id": build.pk, "source": "/src/llama.cpp", "ref": "b6680", "backend": "auto",
                                 "options": {"GGML_CUDA_F16": "on", "LLAMA_CURL": "OFF"}}


@pytest.mark.parametrize("data, error", [
    ({"build-source": "https://x.example/a; rm -rf /"}, "is not a git URL"),
    ({"build-source": "/src/../etc"}, "is not a plain absolute path"),
    ({"build-ref": "../../etc"}, "is not a valid git ref"),
    ({"build-ref": "b1;reboot"}, "is not a valid git ref"),
    ({"build-options": "CMAKE_C_COMPILER=/tmp/evil"}, "CMake option 'CMAKE_C_COMPILER' is not allowed"),
    ({"build-options": "GGML_NATIVE=$(reboot)"}, "GGML_NATIVE must be one of ON, OFF"),
])
def test_it_refuses_a_bad_build_form_and_starts_nothing(operator_client, alpha, data, error,
                                                        django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post("/rigs/alpha/builds/", {
            "build-source": "/src/llama.cpp", "build-ref": "b1", "build-backend": "auto", **data})
    assert response.status_code == 200 and error in page(response)
    assert not Build.objects.exists() and not Operation.objects.exists()
    assert drain(alpha.queue) == []


def test_it_refuses_a_cuda_build_on_a_rig_without_nvidia_gpus(operator_client, alpha,
                                                              django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post("/rigs/alpha/builds/", {
            "build-source": "/src/llama.cpp", "build-ref": "b1", "build-backend": "cuda"}, follow=True)
    assert "Not started: alpha reported no NVIDIA GPU" in page(response)
    assert not Build.objects.exists()
    assert drain(alpha.queue) == []


def test_it_allows_a_cuda_build_on_a_rig_with_gpus(operator_client, alpha, django_capture_on_commit_callbacks):
    alpha.hardware = TWO_3090S
    alpha.save(update_fields=["hardware"])
    with django_capture_on_commit_callbacks(execute=True):
        operator_client.post("/rigs/alpha/builds/", {
            "build-source": "/src/llama.cpp", "build-ref": "b1", "build-backend": "cuda"})
    [(task, _args, kwargs, _expires)] = drain(alpha.queue)
    assert task == protocol.AGENT_BUILD_LLAMA and kwargs["request"]["backend"] == "cuda"
    assert kwargs["hardware"]["gpus"][0]["compute_capability"] == "8.6"


def test_it_refuses_a_second_build_while_one_runs(operator_client, alpha, django_capture_on_commit_callbacks):
    Build.objects.create(node=alpha, source="/src/llama.cpp", ref="b1", status=Build.BUILDING)
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post("/rigs/alpha/builds/", {
            "build-source": "/src/llama.cpp", "build-ref": "b2", "build-backend": "auto"}, follow=True)
    assert "alpha is already building llama.cpp; wait for it or cancel it" in page(response)
    assert Build.objects.count() == 1
    assert drain(alpha.queue) == []


def test_it_adopts_an_existing_llama_server_after_the_rig_checks_it(operator_client, alpha,
                                                                    django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post("/rigs/alpha/builds/adopt/",
                                        {"adopt-path": "/home/me/llama.cpp/build/bin/llama-server"})
    build = Build.objects.get()
    assert response["Location"] == f"/builds/{build.pk}/"
    assert build.adopted and build.status == Build.QUEUED
    [(task, args, kwargs, _expires)] = drain(alpha.queue)
    assert (task, args, kwargs["path"]) == (protocol.AGENT_ADOPT_BUILD, [build.operation.pk],
                                            "/home/me/llama.cpp/build/bin/llama-server")


@pytest.mark.parametrize("path, error", [
    ("llama-server", "'llama-server' is not a plain absolute path"),
    ("/home/me/../../bin/sh", "'/home/me/../../bin/sh' is not a plain absolute path"),
    ("/usr/bin/python3", "/usr/bin/python3 is not a llama-server: its name is 'python3'"),
])
def test_it_refuses_to_adopt_anything_but_an_absolute_llama_server_path(operator_client, alpha, path, error):
    response = operator_client.post("/rigs/alpha/builds/adopt/", {"adopt-path": path}, follow=True)
    assert error in page(response)
    assert not Build.objects.exists()


def test_it_polls_a_build_until_it_is_finished(operator_client, alpha):
    build = Build.objects.create(node=alpha, source="/src/llama.cpp", ref="b1", status=Build.BUILDING)
    response = operator_client.get(f"/builds/{build.pk}/", **HTMX)
    assert response.status_code == 200 and 'data-status="building"' in page(response)
    assert "<html" not in page(response)
    Build.objects.filter(pk=build.pk).update(status=Build.FAILED,
                                             message="git checkout failed: fatal: invalid reference")
    response = operator_client.get(f"/builds/{build.pk}/", **HTMX)
    assert response.status_code == 286 and "fatal: invalid reference" in page(response)


def test_it_makes_another_ready_build_the_rigs_default(operator_client, alpha, ready_build):
    newer = Build.objects.create(node=alpha, source="/src/llama.cpp", ref="b2", status=Build.READY,
                                 binary_path="/b/2/llama-server")
    operator_client.post(f"/builds/{newer.pk}/default/")
    assert list(Build.objects.filter(is_default=True)) == [newer]
    failed = Build.objects.create(node=alpha, source="/src/llama.cpp", ref="b3", status=Build.FAILED)
    assert operator_client.post(f"/builds/{failed.pk}/default/").status_code == 404


# --- deleting builds ---------------------------------------------------------------------------------------
def test_it_refuses_to_delete_a_build_a_running_deployment_uses(operator_client, alpha, ready_build, deployment,
                                                                django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(f"/builds/{ready_build.pk}/delete/", follow=True)
    assert "is used by running deployment(s) tiny: stop them first" in page(response)
    assert Build.objects.filter(pk=ready_build.pk).exists()
    Deployment.objects.filter(pk=deployment.pk).update(desired_state=Deployment.STOPPED)
    response = operator_client.post(f"/builds/{ready_build.pk}/delete/", follow=True)
    assert "delete them or switch them to another build first" in page(response)
    assert Build.objects.filter(pk=ready_build.pk).exists()
    assert drain(alpha.queue) == []


def test_it_deletes_an_unused_build_and_tells_the_rig_to_remove_its_files(operator_client, alpha, ready_build,
                                                                          django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(f"/builds/{ready_build.pk}/delete/", follow=True)
    assert "deleting its files on the rig; the build goes once they have" in page(response)
    assert Build.objects.get(pk=ready_build.pk).message == "deleting its files on the rig…"  # not gone yet
    [(task, _args, kwargs, _expires)] = drain(alpha.queue)
    assert task == protocol.AGENT_DELETE_BUILD and kwargs == {"build_id": ready_build.pk}


def test_it_refuses_to_delete_a_model_file_a_deployment_uses(operator_client, alpha, rig_file, deployment,
                                                             django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(f"/rigs/alpha/files/{rig_file.pk}/delete/", follow=True)
    assert "tiny-Q8_0.gguf is used by deployment(s) tiny: stop and delete tiny first." in page(response)
    assert RigFile.objects.filter(pk=rig_file.pk).exists()
    assert not Operation.objects.exists() and drain(alpha.queue) == []


# --- the deployment form ---------------------------------------------------------------------------------
def test_it_offers_a_free_port_the_default_build_and_the_seed_values(operator_client, alpha, ready_build, rig_file,
                                                                     deployment):
    response = operator_client.get("/rigs/alpha/deployments/new/")
    form = response.context["form"]
    assert form["port"].value() == 8081  # 8080 is taken by "tiny"
    assert form["build"].value() == ready_build.pk
    # alpha has no GPU: no GPU layers (tests/test_issue9_hosting.py has a rig with GPUs).
    assert (form["ctx_size"].value(), form["n_gpu_layers"].value(), form["parallel"].value()) == (8192, 0, 4)


def test_it_hosts_a_model_and_sends_the_launch_to_the_rig(operator_client, operator, alpha, ready_build, rig_file,
                                                          django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post("/rigs/alpha/deployments/new/", form_data(
            ready_build, rig_file, api_key="sk-0123456789", alias="tiny",
            extra_flags_text="--no-webui\n--batch-size=256"))
    deployment = Deployment.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/deployments/{deployment.pk}/"
    assert (deployment.desired_state, deployment.actual_state, deployment.created_by) == ("running", "pending",
                                                                                          operator)
    assert deployment.extra_flags == ["--no-webui", "--batch-size=256"]
    launch = Operation.objects.get()
    assert (launch.kind, launch.target, launch.requested_by) == (Operation.LAUNCH, "tiny", operator)
    [(task, args, kwargs, expires)] = drain(alpha.queue)
    assert (task, args, kwargs["goal"]) == (protocol.AGENT_APPLY_DEPLOYMENT, [launch.pk], "healthy")
    assert expires is not None
    assert "sk-0123456789" not in str(kwargs)  # sealed for this rig on the queue
    assert unsealed(alpha, kwargs["spec"]) == {
        "deployment_id": deployment.pk, "binary": BINARY, "model_path": MODEL, "port": 8080, "host": "127.0.0.1",
        "ctx_size": 4096, "n_gpu_layers": 0, "parallel": 2, "threads": None, "tensor_split": "", "flash_attn": "off",
        "cache_type_k": "f16", "cache_type_v": "f16", "alias": "tiny", "api_key": "sk-0123456789",
        "extra_flags": ["--no-webui", "--batch-size=256"], "desired": "running", "generation": 1,
    }
    # The page shows the command line without the key.
    content = page(operator_client.get(f"/deployments/{deployment.pk}/"))
    assert "--api-key-file <api-key-file>" in content and "sk-0123456789" not in content
    assert "http://127.0.0.1:8080/v1" in content


def test_it_keeps_the_providers_own_numbers_typed_into_the_new_form(operator_client, alpha, ready_build, rig_file,
                                                                    django_capture_on_commit_callbacks):
    # What the browser posts: the form as offered (its preset choice untouched), with the numbers changed.
    offered = operator_client.get("/rigs/alpha/deployments/new/").context["form"]
    preset = offered["preset"].value() or ""
    with django_capture_on_commit_callbacks(execute=True):
        operator_client.post("/rigs/alpha/deployments/new/", form_data(ready_build, rig_file, preset=preset,
                                                                        ctx_size=2048, parallel=3, n_gpu_layers=10))
    deployment = Deployment.objects.get()
    assert (deployment.ctx_size, deployment.parallel, deployment.n_gpu_layers) == (2048, 3, 10)


def test_it_fills_the_seeds_dual_gpu_values_from_the_preset(operator_client, alpha, ready_build, rig_file,
                                                            django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        operator_client.post("/rigs/alpha/deployments/new/", form_data(ready_build, rig_file, preset="seed-dual-gpu"))
    deployment = Deployment.objects.get()
    assert (deployment.ctx_size, deployment.n_gpu_layers, deployment.parallel, deployment.tensor_split) == (
        8192, 99, 22, "1,1")
    [(_task, _args, kwargs, _expires)] = drain(alpha.queue)
    assert kwargs["spec"]["parallel"] == 22 and kwargs["spec"]["tensor_split"] == "1,1"


@pytest.mark.parametrize("changes, error", [
    ({"ctx_size": 0}, "Ensure this value is greater than or equal to 256."),
    ({"ctx_size": 10_000_000}, "Ensure this value is less than or equal to 1048576."),
    ({"ctx_size": 512, "parallel": 8}, "ctx-size 512 split over 8 slots leaves under 128 tokens each"),
    ({"port": 80}, "Ensure this value is greater than or equal to 1024."),
    ({"port": 70000}, "Ensure this value is less than or equal to 65535."),
    ({"host": "my-rig.local"}, "Enter a valid IPv4 or IPv6 address."),
    ({"name": "Tiny Model!"}, "Lowercase letters, digits and '-'."),
    ({"extra_flags_text": "--rpc=10.0.0.2:50052"}, "flag '--rpc' is not allowed"),
    ({"extra_flags_text": "--mlock; rm -rf /"}, "flag '--mlock; rm -rf /' is not allowed"),
    ({"extra_flags_text": "--batch-size=512 && reboot"}, "--batch-size needs a value like --batch-size=512"),
    ({"extra_flags_text": "--mlock=yes"}, "--mlock takes no value"),
    ({"alias": "x$(reboot)"}, "alias may hold letters, digits"),
    ({"tensor_split": "1,1;ls"}, "tensor-split must look like 1,1"),
    ({"api_key": "short"}, "API key must be 8-128 characters"),
    ({"host": "0.0.0.0"}, "host 0.0.0.0 lets other machines reach the server: set an API key, or use 127.0.0.1"),
    ({"host": "192.168.1.20", "api_key": ""}, "host 192.168.1.20 lets other machines reach the server"),
    ({"flash_attn": "yes"}, "Select a valid choice."),
])
def test_it_refuses_bad_launch_parameters_and_starts_nothing(operator_client, alpha, ready_build, rig_file, changes,
                                                             error, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post("/rigs/alpha/deployments/new/", form_data(ready_build, rig_file, **changes))
    assert response.status_code == 200 and error in page(response)
    assert not Deployment.objects.exists() and not Operation.objects.exists()
    assert drain(alpha.queue) == []


def test_it_refuses_a_port_another_deployment_on_the_rig_holds(operator_client, alpha, ready_build, rig_file,
                                                               deployment):
    response = operator_client.post("/rigs/alpha/deployments/new/", form_data(ready_build, rig_file, name="other"))
    assert response.status_code == 200 and "port 8080 is taken by tiny on this rig" in page(response)
    # The same port on another rig is fine: ports are per machine.
    beta, _token = make_node("beta")
    other_build = Build.objects.create(node=beta, source="/s", ref="b1", status=Build.READY, binary_path=BINARY)
    other_file = RigFile.objects.create(node=beta, path=MODEL, size=1)
    response = operator_client.post("/rigs/beta/deployments/new/", form_data(other_build, other_file))
    assert response.status_code == 302
    assert Deployment.objects.filter(port=8080).count() == 2


def test_it_refuses_a_model_file_or_build_of_another_rig_and_a_failed_build(operator_client, alpha, ready_build,
                                                                            rig_file):
    beta, _token = make_node("beta")
    elsewhere = RigFile.objects.create(node=beta, path=MODEL, size=1)
    their_build = Build.objects.create(node=beta, source="/s", ref="b1", status=Build.READY, binary_path=BINARY)
    failed = Build.objects.create(node=alpha, source="/s", ref="b2", status=Build.FAILED)
    for changes in ({"model_file": elsewhere.pk}, {"build": their_build.pk}, {"build": failed.pk}):
        response = operator_client.post("/rigs/alpha/deployments/new/", form_data(ready_build, rig_file, **changes))
        assert response.status_code == 200
        assert "Select a valid choice. That choice is not one of the available choices." in page(response), changes
    assert not Deployment.objects.exists()


def test_it_saves_but_does_not_launch_when_the_build_stopped_being_ready(operator_client, alpha, ready_build,
                                                                         deployment,
                                                                         django_capture_on_commit_callbacks):
    Build.objects.filter(pk=ready_build.pk).update(status=Build.FAILED)
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(f"/deployments/{deployment.pk}/launch/", follow=True)
    assert "Not started: build" in page(response) and "is not ready (failed)" in page(response)
    assert not Operation.objects.exists() and drain(alpha.queue) == []


def test_it_restarts_a_deployment_with_its_new_settings_after_an_edit(operator_client, alpha, ready_build, rig_file,
                                                                      deployment, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(f"/rigs/alpha/deployments/{deployment.pk}/edit/",
                                        form_data(ready_build, rig_file, ctx_size=8192))
    assert response.status_code == 302
    deployment.refresh_from_db()
    assert (deployment.ctx_size, deployment.generation) == (8192, 3)  # +1 for the new settings, +1 for the restart
    [(task, _args, kwargs, _expires)] = drain(alpha.queue)
    assert task == protocol.AGENT_APPLY_DEPLOYMENT
    assert kwargs["spec"]["ctx_size"] == 8192 and kwargs["spec"]["generation"] == 3
    assert Operation.objects.get().kind == Operation.RESTART


def test_it_hosts_on_an_open_host_once_an_api_key_is_set(operator_client, alpha, ready_build, rig_file,
                                                         django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post("/rigs/alpha/deployments/new/", form_data(
            ready_build, rig_file, host="0.0.0.0", api_key="sk-0123456789"))
    assert response.status_code == 302
    assert Deployment.objects.get().api_key == "sk-0123456789"


@pytest.fixture
def keyed(deployment):
    Deployment.objects.filter(pk=deployment.pk).update(host="0.0.0.0", api_key="sk-stored-key-0123")
    deployment.refresh_from_db()
    return deployment


def test_it_never_shows_a_stored_api_key_on_the_edit_page(operator_client, keyed):
    content = page(operator_client.get(f"/rigs/alpha/deployments/{keyed.pk}/edit/"))
    assert "sk-stored-key" not in content
    assert "set — leave blank to keep" in content and "remove the API key" in content
    assert 'type="password" name="api_key"' in content


def test_it_keeps_the_stored_api_key_when_the_field_is_left_blank(operator_client, alpha, ready_build, rig_file,
                                                                  keyed, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(f"/rigs/alpha/deployments/{keyed.pk}/edit/", form_data(
            ready_build, rig_file, host="0.0.0.0", ctx_size=8192))
    assert response.status_code == 302
    keyed.refresh_from_db()
    assert (keyed.api_key, keyed.ctx_size) == ("sk-stored-key-0123", 8192)


def test_it_replaces_or_removes_the_api_key_on_request(operator_client, alpha, ready_build, rig_file, keyed,
                                                       django_capture_on_commit_callbacks):
    url = f"/rigs/alpha/deployments/{keyed.pk}/edit/"
    with django_capture_on_commit_callbacks(execute=True):
        # Removing it while the server listens on 0.0.0.0 is refused; on 127.0.0.1 it is fine.
        refused = operator_client.post(url, form_data(ready_build, rig_file, host="0.0.0.0", remove_api_key="on"))
        both = operator_client.post(url, form_data(ready_build, rig_file, api_key="sk-new-key-0123",
                                                   remove_api_key="on"))
        keyed.refresh_from_db()
        assert keyed.api_key == "sk-stored-key-0123"
        assert "lets other machines reach the server: set an API key" in page(refused)
        assert "Type a new key or remove it, not both." in page(both)
        assert operator_client.post(url, form_data(ready_build, rig_file, host="0.0.0.0",
                                                   api_key="sk-new-key-0123")).status_code == 302
        keyed.refresh_from_db()
        assert keyed.api_key == "sk-new-key-0123"
        assert operator_client.post(url, form_data(ready_build, rig_file, remove_api_key="on")).status_code == 302
    keyed.refresh_from_db()
    assert (keyed.api_key, keyed.host) == ("", "127.0.0.1")
    content = page(operator_client.get(url))
    assert "remove the API key" not in content and "leave blank to keep" not in content


# --- start, stop, restart, delete --------------------------------------------------------------------------
@pytest.mark.parametrize("action, kind, desired, goal, generation", [
    ("stop", Operation.STOP, "stopped", "stopped", 1),
    ("launch", Operation.LAUNCH, "running", "healthy", 1),
    ("restart", Operation.RESTART, "running", "healthy", 2),
])
def test_it_sends_start_stop_and_restart_to_the_rig(operator_client, alpha, deployment, action, kind, desired, goal,
                                                    generation, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(f"/deployments/{deployment.pk}/{action}/")
    assert response["Location"] == f"/deployments/{deployment.pk}/"
    deployment.refresh_from_db()
    assert (deployment.desired_state, deployment.generation) == (desired, generation)
    operation = Operation.objects.get()
    assert operation.kind == kind
    [(task, args, kwargs, _expires)] = drain(alpha.queue)
    assert (task, args, kwargs["goal"]) == (protocol.AGENT_APPLY_DEPLOYMENT, [operation.pk], goal)
    assert (kwargs["spec"]["desired"], kwargs["spec"]["generation"]) == (desired, generation)


def test_it_stops_but_does_not_launch_a_server_saved_on_an_open_host_without_a_key(operator_client, alpha, deployment,
                                                                                  django_capture_on_commit_callbacks):
    Deployment.objects.filter(pk=deployment.pk).update(host="0.0.0.0")  # saved before a key was required
    assert "not launchable: host 0.0.0.0 lets other machines reach the server" in page(
        operator_client.get(f"/deployments/{deployment.pk}/"))
    with django_capture_on_commit_callbacks(execute=True):
        operator_client.post(f"/deployments/{deployment.pk}/stop/")
    assert Operation.objects.get().kind == Operation.STOP
    [message] = drain(alpha.queue)
    assert (message[2]["spec"]["host"], message[2]["spec"]["desired"]) == ("0.0.0.0", "stopped")
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(f"/deployments/{deployment.pk}/launch/", follow=True)
    assert "set an API key" in page(response)
    assert Operation.objects.count() == 1 and drain(alpha.queue) == []


def test_it_refuses_an_unknown_action_or_a_get(operator_client, deployment):
    assert operator_client.get(f"/deployments/{deployment.pk}/stop/").status_code == 405
    response = operator_client.post(f"/deployments/{deployment.pk}/format/", follow=True)
    assert "unknown action 'format'" in page(response)
    assert not Operation.objects.exists()


def test_it_refuses_to_delete_a_running_deployment(operator_client, alpha, deployment,
                                                   django_capture_on_commit_callbacks):
    Deployment.objects.filter(pk=deployment.pk).update(actual_state="healthy")
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(f"/deployments/{deployment.pk}/delete/", follow=True)
    assert "Stop the server before deleting the deployment." in page(response)
    assert Deployment.objects.filter(pk=deployment.pk).exists()
    assert drain(alpha.queue) == []


def test_it_deletes_a_stopped_deployment_and_tells_the_rig_to_forget_it(operator_client, alpha, deployment,
                                                                         django_capture_on_commit_callbacks):
    Deployment.objects.filter(pk=deployment.pk).update(desired_state="stopped", actual_state="stopped")
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(f"/deployments/{deployment.pk}/delete/")
    assert response["Location"] == "/deployments/"
    assert not Deployment.objects.exists()
    [(task, args, kwargs, expires)] = drain(alpha.queue)
    assert (task, args, kwargs) == (protocol.AGENT_FORGET_DEPLOYMENT, [], {"deployment_id": deployment.pk})
    assert expires is not None  # a rig offline for a day is reminded by the reconcile instead


# --- the deployment page -----------------------------------------------------------------------------------
def test_it_shows_the_live_part_of_a_deployment_to_a_poll(viewer_client, deployment):
    Deployment.objects.filter(pk=deployment.pk).update(
        actual_state="healthy", pid=4242, restarts=2, started_at=timezone.now(), host="0.0.0.0",
        log_tail="srv  update_slots: all slots are idle")
    response = viewer_client.get(f"/deployments/{deployment.pk}/", **HTMX)
    content = page(response)
    assert response.status_code == 200 and "<html" not in content
    assert 'data-state="healthy"' in content and "pid 4242" in content
    assert "http://alpha-box:8080/v1" in content  # served to other machines: the rig's hostname
    assert "all slots are idle" in content
    assert 'id="restarts">2<' in content
    full = page(viewer_client.get(f"/deployments/{deployment.pk}/"))
    assert "<html" in full and 'id="stop"' not in full  # a viewer gets no buttons


def test_it_lists_deployments_filtered_by_rig(viewer_client, deployment):
    assert "tiny-Q8_0.gguf" in page(viewer_client.get("/deployments/"))
    assert "tiny-Q8_0.gguf" not in page(viewer_client.get("/deployments/?node=beta"))


# --- the periodic reconcile --------------------------------------------------------------------------------
def test_it_reminds_only_online_rigs_of_their_deployments_with_an_expiry(alpha, deployment):
    beta, _token = make_node("beta", last_seen=timezone.now() - timezone.timedelta(hours=1))
    beta_build = Build.objects.create(node=beta, source="/s", ref="b1", status=Build.READY, binary_path=BINARY)
    beta_file = RigFile.objects.create(node=beta, path=MODEL, size=1)
    Deployment.objects.create(node=beta, name="offline", model_file=beta_file, build=beta_build, port=8080)
    make_node("gamma", last_seen=timezone.now())  # online, nothing hosted: nothing to send
    drain(beta.queue)

    assert reconcile_deployments(interval=30) == 1
    [(task, args, kwargs, expires)] = drain(alpha.queue)
    assert task == protocol.AGENT_RECONCILE_DEPLOYMENTS and args == [] and expires is not None
    specs = kwargs["specs"]
    assert [(s["deployment_id"], s["port"], s["desired"]) for s in specs] == [(deployment.pk, 8080, "running")]
    assert drain(beta.queue) == []
    assert drain("node.gamma") == []


def test_it_leaves_out_a_deployment_that_cannot_launch_from_the_reminder(alpha, deployment):
    unbuilt = Build.objects.create(node=alpha, source="/s", ref="b2", status=Build.FAILED)
    other = RigFile.objects.create(node=alpha, path="/m/other.gguf", size=1)
    Deployment.objects.create(node=alpha, name="broken", model_file=other, build=unbuilt, port=8090)
    reconcile_deployments()
    [(_task, _args, kwargs, _expires)] = drain(alpha.queue)
    specs = kwargs["specs"]
    assert [s["deployment_id"] for s in specs] == [deployment.pk]


def test_it_says_a_healthy_server_is_serving_only_while_its_rig_is_online(viewer_client, alpha, deployment):
    from datetime import timedelta

    from django.utils import timezone

    Deployment.objects.filter(pk=deployment.pk).update(actual_state="healthy")
    alpha.last_seen = timezone.now()
    alpha.save(update_fields=["last_seen"])
    content = page(viewer_client.get(f"/deployments/{deployment.pk}/"))
    assert '<span class="ok">serving</span>' in content and 'id="rig-not-online"' not in content

    alpha.last_seen = timezone.now() - timedelta(minutes=10)
    alpha.save(update_fields=["last_seen"])
    content = page(viewer_client.get(f"/deployments/{deployment.pk}/"))
    assert "rig offline: last reported state" in content and '<span class="ok">serving</span>' not in content


def test_it_shows_the_crash_history_and_crashes_in_the_last_hour(viewer_client, deployment):
    from hosting.models import ServerExit

    now = timezone.now()
    ServerExit.objects.create(deployment=deployment, at=now - timezone.timedelta(minutes=5), signal=9,
                              uptime=11520, restart_in=1, log_tail="ggml_abort")
    ServerExit.objects.create(deployment=deployment, at=now - timezone.timedelta(hours=3), exit_code=1, uptime=4,
                              restart_in=2)
    content = page(viewer_client.get(f"/deployments/{deployment.pk}/"))
    assert "crashed (SIGKILL) after 3 h 12 min; restarted 1 s later" in content and "ggml_abort" in content
    assert "crashed (exit code 1) after 4 s; restarted 2 s later" in content
    listing = page(viewer_client.get("/deployments/"))
    assert '<td class="mismatch">1</td>' in listing  # one crash in the last hour, not two
