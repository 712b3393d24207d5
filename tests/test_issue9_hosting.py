"""Rough edges of hosting a model (issue 9): a port free on the rig itself, settings that fit the rig and the model,
a local folder built at its own HEAD, action buttons that follow the state, a refused adoption that says why."""

import socket
import subprocess

import psutil
import pytest
from django.utils import timezone

from hosting.models import Build, Deployment
from models_catalog.models import RigFile
from nodes.agent import builder, probe
from nodes.agent.builder import Builder, BuildError, BuildRequest, _Log
from nodes.reports import ReportError, clean_telemetry
from tests.helpers import make_node, page, queued_messages, report
from tests.test_reports import telemetry
from tests.test_views_hosting import ready_build  # noqa: F401  (a fixture)

HTMX = {"HTTP_HX_REQUEST": "true"}
MODEL = "/var/lib/morpheus-agent/models/org__Tiny-GGUF/tiny-Q8_0.gguf"
TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


# --- 1. the rig's listening ports: probed, validated, stored, used by the form ------------------------------------
def proc_line(address, state):
    return f"   0: {address} 00000000:0000 {state} 00000000:00000000 00:00000000 00000000     0        0 1 1\n"


def test_it_reads_the_ports_this_host_listens_on_from_proc_net_tcp(tmp_path):
    tcp, tcp6 = tmp_path / "tcp", tmp_path / "tcp6"
    tcp.write_text(TCP_HEADER + proc_line("00000000:1F90", "0A") + proc_line("0100007F:0016", "0A")
                   + proc_line("0100007F:1F91", "01"))  # 8080 and 22 listen; 8081 is a connection
    tcp6.write_text(TCP_HEADER + proc_line("00000000000000000000000000000000:2CAA", "0A")
                    + proc_line("00000000000000000000000000000000:1F90", "0A"))
    assert probe.listening_ports((str(tcp), str(tcp6))) == [22, 8080, 11434]
    assert probe.listening_ports((str(tcp), str(tcp6)), limit=2) == [22, 8080]


def test_it_reports_no_ports_instead_of_failing_where_the_host_will_not_say(tmp_path, monkeypatch):
    def refused(kind):
        raise psutil.AccessDenied()

    monkeypatch.setattr(probe.psutil, "net_connections", refused)
    assert probe.listening_ports((str(tmp_path / "no-such-file"),)) is None
    monkeypatch.setattr(probe, "PROC_TCP", (str(tmp_path / "no-such-file"),))
    reading = probe.TelemetrySampler(tmp_path).sample()
    assert "listening_ports" not in reading["host"] and clean_telemetry(reading)["host"]["ram_used"] > 0


def test_it_samples_a_port_a_program_listens_on_and_the_panel_accepts_it(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        reading = probe.TelemetrySampler(tmp_path).sample()
    assert port in reading["host"]["listening_ports"]
    assert port in clean_telemetry(reading)["host"]["listening_ports"]


def test_it_keeps_listening_ports_sorted_and_unique():
    reading = telemetry()
    reading["host"]["listening_ports"] = [8080, 22, 8080]
    assert clean_telemetry(reading)["host"]["listening_ports"] == [22, 8080]


@pytest.mark.parametrize("ports", [[0], [65536], ["8080"], [True], [8080.0], "8080", list(range(1, 514))])
def test_it_refuses_listening_ports_that_are_not_tcp_ports(ports):
    reading = telemetry()
    reading["host"]["listening_ports"] = ports
    with pytest.raises(ReportError, match="listening_ports"):
        clean_telemetry(reading)


@pytest.mark.django_db
def test_it_stores_the_rigs_listening_ports_from_its_telemetry():
    node, token = make_node("alpha")
    reading = telemetry(at=timezone.now().timestamp())
    reading["host"]["listening_ports"] = [22, 8080]
    assert report("alpha", token, "telemetry", reading) is None
    node.refresh_from_db()
    assert node.host_reading["listening_ports"] == [22, 8080]


@pytest.fixture
def alpha(db):
    node, _token = make_node("alpha", hardware={"gpus": [], "hostname": "alpha-box"}, last_seen=timezone.now(),
                             host_reading={"cpu_percent": 3.0, "listening_ports": [22, 8080, 8081]})
    yield node
    queued_messages(node.queue)  # leaves the memory:// broker empty for the next test


@pytest.fixture
def rig_file(alpha):
    return RigFile.objects.create(node=alpha, path=MODEL, size=4 << 20, facts={"context_length": 512})


def form_data(ready_build, rig_file, **changes):
    data = {"name": "tiny", "model_file": rig_file.pk, "build": ready_build.pk, "host": "127.0.0.1", "port": 8090,
            "ctx_size": 2048, "n_gpu_layers": 0, "parallel": 4, "flash_attn": "off", "cache_type_k": "f16",
            "cache_type_v": "f16"}
    return {**data, **changes}


def test_it_suggests_a_port_nothing_on_the_rig_listens_on(operator_client, alpha, ready_build, rig_file):
    Deployment.objects.create(node=alpha, name="other", model_file=rig_file, build=ready_build, port=8082)
    form = operator_client.get("/rigs/alpha/deployments/new/").context["form"]
    assert form["port"].value() == 8083  # 8080 and 8081: programs on the rig; 8082: a deployment


def test_it_refuses_a_port_a_program_on_the_rig_listens_on(operator_client, alpha, ready_build, rig_file,
                                                          django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post("/rigs/alpha/deployments/new/", form_data(ready_build, rig_file, port=8080))
    assert response.status_code == 200
    assert "port 8080 is in use on alpha: another program listens on it; choose another, e.g. 8082" in page(response)
    assert not Deployment.objects.exists() and queued_messages(alpha.queue) == []


@pytest.mark.parametrize("state, allowed", [("healthy", True), ("loading", True), ("failed", False),
                                            ("stopped", False)])
def test_it_lets_a_deployment_keep_the_port_only_its_own_server_listens_on(operator_client, alpha, ready_build,
                                                                           rig_file, state, allowed):
    deployment = Deployment.objects.create(node=alpha, name="tiny", model_file=rig_file, build=ready_build,
                                           port=8080, ctx_size=2048, n_gpu_layers=0, actual_state=state)
    response = operator_client.post(f"/rigs/alpha/deployments/{deployment.pk}/edit/",
                                    form_data(ready_build, rig_file, port=8080))
    assert (response.status_code == 302) is allowed
    if not allowed:  # a stopped or failed server listens nowhere: another program holds the port
        assert "port 8080 is in use on alpha" in page(response)


# --- 2. suggested settings fit the rig and the model -------------------------------------------------------------
def test_it_suggests_no_gpu_layers_on_a_cpu_rig_and_slots_within_the_models_trained_context(operator_client,
                                                                                            alpha, rig_file):
    response = operator_client.get("/rigs/alpha/deployments/new/")
    form = response.context["form"]
    assert form["model_file"].value() == rig_file.pk  # the rig's only model file
    assert (form["n_gpu_layers"].value(), form["parallel"].value(), form["ctx_size"].value()) == (0, 4, 2048)
    assert "tiny-Q8_0.gguf was trained on 512 tokens" in page(response)


def test_it_keeps_the_seed_values_on_a_gpu_rig_and_preselects_no_model_among_several(operator_client, alpha,
                                                                                     rig_file):
    alpha.hardware = {"gpus": [{"index": 0, "name": "NVIDIA GeForce RTX 3090", "compute_capability": "8.6"}]}
    alpha.save(update_fields=["hardware"])
    RigFile.objects.create(node=alpha, path=MODEL.replace("tiny", "big"), size=8 << 20)
    form = operator_client.get("/rigs/alpha/deployments/new/").context["form"]
    assert form["model_file"].value() is None
    assert (form["n_gpu_layers"].value(), form["parallel"].value(), form["ctx_size"].value()) == (99, 4, 8192)


def test_it_refuses_more_context_per_slot_than_the_model_was_trained_on_without_a_rope_setting(
        operator_client, alpha, ready_build, rig_file, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post("/rigs/alpha/deployments/new/", form_data(
            ready_build, rig_file, ctx_size=8192, parallel=4, n_gpu_layers=99))
    assert response.status_code == 200 and not Deployment.objects.exists()
    assert ("ctx-size 8192 gives each of the 4 parallel slots 2048 tokens, more than the 512 tiny-Q8_0.gguf was "
            "trained on: use ctx-size 2048 or less, or add a rope setting") in page(response)
    assert queued_messages(alpha.queue) == []


def test_it_saves_more_context_than_the_model_was_trained_on_with_a_rope_setting_and_a_warning(
        operator_client, alpha, ready_build, rig_file, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post("/rigs/alpha/deployments/new/", form_data(
            ready_build, rig_file, ctx_size=8192, parallel=4, n_gpu_layers=99,
            extra_flags_text="--rope-freq-scale=0.25"), follow=True)
    deployment = Deployment.objects.get()
    assert (deployment.ctx_size, deployment.n_gpu_layers) == (8192, 99)  # what the provider asked for
    content = page(response)
    assert ("Each of the 4 parallel slots gets 2048 tokens of context, more than the 512 tiny-Q8_0.gguf was "
            "trained on, stretched by your rope setting") in content
    assert "alpha reports no GPU: llama-server ignores --n-gpu-layers 99 there" in content


def test_it_warns_of_nothing_when_the_settings_fit(operator_client, alpha, ready_build, rig_file,
                                                   django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post("/rigs/alpha/deployments/new/", form_data(ready_build, rig_file),
                                        follow=True)
    assert Deployment.objects.exists()
    assert "parallel slots gets" not in page(response) and "reports no GPU" not in page(response)


# --- 3. a local folder builds its own HEAD --------------------------------------------------------------------------
def test_it_builds_a_local_folder_at_its_head_and_a_git_url_at_the_tested_release(operator_client, alpha,
                                                                                  django_capture_on_commit_callbacks):
    content = page(operator_client.get("/rigs/alpha/builds/"))
    assert "HEAD (the commit the folder has checked out) from a local folder" in content
    with django_capture_on_commit_callbacks(execute=True):
        operator_client.post("/rigs/alpha/builds/", {"build-source": "/src/llama.cpp", "build-ref": "",
                                                     "build-backend": "cpu"})
    [sent] = queued_messages(alpha.queue)
    assert Build.objects.get().ref == "HEAD" and sent.kwargs["request"]["ref"] == "HEAD"
    Build.objects.all().delete()
    with django_capture_on_commit_callbacks(execute=True):
        operator_client.post("/rigs/alpha/builds/", {"build-source": builder.DEFAULT_SOURCE, "build-ref": " ",
                                                     "build-backend": "cpu"})
    [sent] = queued_messages(alpha.queue)
    assert Build.objects.get().ref == builder.DEFAULT_REF and sent.kwargs["request"]["ref"] == builder.DEFAULT_REF


def git(*args, cwd):
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_GLOBAL": "/dev/null", "PATH": "/usr/bin:/bin"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def commit(repo, text):
    (repo / "VERSION").write_text(text)
    git("add", "VERSION", cwd=repo)
    git("commit", "-q", "-m", text, cwd=repo)


def test_it_checks_out_the_folders_head_even_after_it_moved_to_another_branch_or_a_detached_commit(tmp_path):
    repo = tmp_path / "llama.cpp"
    repo.mkdir()
    git("init", "-q", "-b", "master", cwd=repo)
    commit(repo, "one\n")
    work = tmp_path / "builds"

    def build_head(folder):
        log = _Log(None)
        Builder(work)._checkout(BuildRequest(build_id=1, source=str(repo), ref="HEAD"), work / folder, log)
        return (work / folder / "VERSION").read_text(), log.tail()

    assert build_head("a")[0] == "one\n"
    git("checkout", "-q", "-b", "feature", cwd=repo)
    commit(repo, "two\n")
    text, log = build_head("b")
    assert text == "two\n" and "== fetch" in log  # through the existing mirror, whose own HEAD is still master
    git("checkout", "-q", "--detach", cwd=repo)
    commit(repo, "three\n")  # on no branch at all
    assert build_head("c")[0] == "three\n"


# --- 4. the action buttons follow the state -------------------------------------------------------------------------
def test_it_refreshes_the_action_buttons_with_the_live_part(operator_client, alpha, ready_build, rig_file):
    deployment = Deployment.objects.create(node=alpha, name="tiny", model_file=rig_file, build=ready_build,
                                           port=8090, actual_state="failed")
    content = page(operator_client.get(f"/deployments/{deployment.pk}/", **HTMX))
    assert "<html" not in content and f'href="/deployments/{deployment.pk}/delete/"' in content
    Deployment.objects.filter(pk=deployment.pk).update(actual_state="healthy")
    content = page(operator_client.get(f"/deployments/{deployment.pk}/", **HTMX))
    assert f'href="/deployments/{deployment.pk}/delete/"' not in content and 'id="stop"' in content
    Deployment.objects.filter(pk=deployment.pk).update(desired_state="stopped", actual_state="stopped")
    content = page(operator_client.get(f"/deployments/{deployment.pk}/", **HTMX))
    assert 'id="launch"' in content and 'id="stop"' not in content
    assert f'href="/deployments/{deployment.pk}/delete/"' in content


def test_it_refreshes_no_buttons_for_a_viewer(viewer_client, alpha, ready_build, rig_file):
    deployment = Deployment.objects.create(node=alpha, name="tiny", model_file=rig_file, build=ready_build,
                                           port=8090, actual_state="stopped", desired_state="stopped")
    content = page(viewer_client.get(f"/deployments/{deployment.pk}/", **HTMX))
    assert 'data-state="stopped"' in content and 'id="launch"' not in content and "/delete/" not in content


# --- 5. adopting something that is not a llama-server ----------------------------------------------------------------
def test_it_says_why_a_path_is_not_a_llama_server_and_keeps_it_in_the_form(operator_client, alpha):
    response = operator_client.post("/rigs/alpha/builds/adopt/", {"adopt-path": "/etc/passwd"})
    content = page(response)
    assert response.status_code == 200
    assert "/etc/passwd is not a llama-server: its name is 'passwd', not llama-server…" in content
    assert 'value="/etc/passwd"' in content
    assert not Build.objects.exists() and queued_messages(alpha.queue) == []


@pytest.mark.parametrize("path", ["bin/llama-server", "/opt/../bin/llama-server", "/opt/llama-server\n--help",
                                  "/opt/llama-server\x00"])
def test_it_refuses_an_adopted_path_that_is_not_plain_and_absolute(path):
    with pytest.raises(BuildError, match="is not a plain absolute path"):
        builder.check_server_path(path)


def test_it_says_a_llama_server_that_cannot_be_run_is_not_executable(tmp_path):
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\necho version: 1 (abc)\n")
    with pytest.raises(BuildError, match="llama-server is not executable"):
        builder.server_version(binary)
