"""Agent reports about builds (their operations) and llama-server processes (`deployment` reports)."""

import time

import pytest
from django.utils import timezone

from hosting.models import Build, Deployment
from models_catalog.models import RigFile
from hosting import services
from nodes.models import Operation
from tests.helpers import make_node, report as handle_report

pytestmark = pytest.mark.django_db

BINARY = "/var/lib/morpheus-agent/builds/1/llama-server"


@pytest.fixture
def alpha():
    return make_node("alpha")


def start_build(node, **fields):
    operation = Operation.objects.create(node=node, kind=Operation.BUILD_LLAMA)
    return Build.objects.create(node=node, source="/src/llama.cpp", ref="b1", operation=operation, **fields)


def report_operation(rig, operation, status, message="", result=None, **extra):
    node, token = rig
    return handle_report(node.name, token, "operation", {"operation": operation.pk, "status": status,
                                                         "message": message, "result": result or {}, **extra})


RESULT = {"binary": BINARY, "version": "0.5.0-dev (build 1, 0c1e57098)", "commit": "0c1e57098", "backend": "cpu",
          "cuda_architectures": "", "seconds": 258.4, "build_number": 1, "ref": "b1", "source": "/src/llama.cpp"}


def test_it_follows_a_build_through_its_operation_until_it_is_ready(alpha):
    build = start_build(alpha[0])
    assert report_operation(alpha, build.operation, "running", "compile 45%",
                            progress={"done": 45, "total": 100, "unit": "%"}, log="[ 45%] Building") is None
    build.refresh_from_db()
    assert (build.status, build.message) == (Build.BUILDING, "compile 45%")

    assert report_operation(alpha, build.operation, "succeeded", "built llama-server", RESULT) is None
    build.refresh_from_db()
    assert (build.status, build.binary_path, build.version, build.commit, build.backend, build.duration) == (
        Build.READY, BINARY, "0.5.0-dev (build 1, 0c1e57098)", "0c1e57098", "cpu", 258.4)
    assert build.finished is not None
    assert build.is_default  # the rig's first ready build


def test_it_keeps_the_existing_default_when_another_build_finishes(alpha):
    first = start_build(alpha[0])
    report_operation(alpha, first.operation, "succeeded", "built", RESULT)
    second = start_build(alpha[0], backend="cuda")
    report_operation(alpha, second.operation, "succeeded", "built",
                     {**RESULT, "backend": "cuda", "cuda_architectures": "86", "binary": "/b/2/llama-server"})
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.is_default and not second.is_default
    assert (second.status, second.backend, second.cuda_architectures) == (Build.READY, "cuda", "86")


def test_it_makes_a_ready_build_default_when_the_other_builds_failed(alpha):
    failed = start_build(alpha[0])
    report_operation(alpha, failed.operation, "failed", "git checkout failed: fatal: invalid reference: nope")
    ready = start_build(alpha[0])
    report_operation(alpha, ready.operation, "succeeded", "built", RESULT)
    failed.refresh_from_db()
    ready.refresh_from_db()
    assert (failed.status, failed.message, failed.is_default) == (
        Build.FAILED, "git checkout failed: fatal: invalid reference: nope", False)
    assert failed.finished is not None and failed.binary_path == ""
    assert ready.is_default


def test_it_marks_a_cancelled_build(alpha):
    build = start_build(alpha[0])
    report_operation(alpha, build.operation, "running", "compile 10%")
    report_operation(alpha, build.operation, "cancelled", "cancelled by the provider; the build was stopped")
    build.refresh_from_db()
    assert (build.status, build.is_default) == (Build.CANCELLED, False)


def test_it_records_an_adopted_binary_with_its_version(alpha):
    operation = Operation.objects.create(node=alpha[0], kind=Operation.ADOPT_BUILD)
    build = Build.objects.create(node=alpha[0], source=BINARY, ref="", adopted=True, operation=operation)
    report_operation(alpha, operation, "succeeded", "llama-server 4589 (1d1e6a90) runs; adopted",
                     {"binary": BINARY, "backend": "cuda", "seconds": 0, "version": "4589 (1d1e6a90)",
                      "commit": "1d1e6a90"})
    build.refresh_from_db()
    assert (build.status, build.backend, build.version, build.is_default) == (
        Build.READY, "cuda", "4589 (1d1e6a90)", True)


def _cancel(build):
    from nodes.operations import cancel_operation

    cancel_operation(build.operation)


def _expire(build):
    from nodes.tasks import expire_operations

    Operation.objects.filter(pk=build.operation_id).update(created=timezone.now() - timezone.timedelta(hours=1))
    assert expire_operations() == 1


def _interrupt(build):
    from nodes.ingest import mark_lost

    build.operation.apply_report(Operation.RUNNING, "building", seq=5)
    assert mark_lost(build.node, listed=[], seq=6, now=timezone.now(), boot=True) == 1


@pytest.mark.parametrize("end, status, words", [
    (_cancel, Build.CANCELLED, "cancelled before the rig started it"),
    (_expire, Build.FAILED, "did not pick this up within"),
    (_interrupt, Build.FAILED, "interrupted: the rig's agent restarted"),
])
def test_a_build_ended_by_cancel_expiry_or_interruption_frees_the_rig_for_the_next(alpha, end, status, words):
    node, _token = alpha
    node.hardware = {"gpus": []}
    node.save(update_fields=["hardware"])
    first = services.start_build(node, None, "/src/llama.cpp", "b1")
    with pytest.raises(services.Refused, match="already building"):
        services.start_build(node, None, "/src/llama.cpp", "b2")

    end(Build.objects.select_related("operation", "node").get(pk=first.pk))

    first.refresh_from_db()
    assert first.status == status and words in first.message and first.finished is not None
    assert services.start_build(node, None, "/src/llama.cpp", "b2").status == Build.QUEUED


@pytest.mark.parametrize("status, message, stays", [
    ("succeeded", "removed /var/lib/morpheus-agent/builds/1", False),
    ("failed", "a running server uses this build", True),
])
def test_a_deleted_build_goes_only_once_the_rig_removed_its_files(alpha, status, message, stays):
    node, _token = alpha
    build = start_build(node, status=Build.READY, binary_path=BINARY)
    operation = services.delete_build(build, None)
    assert Build.objects.filter(pk=build.pk).exists()
    other, _ = make_node("beta")
    theirs = start_build(other, status=Build.READY, binary_path=BINARY)
    # A rig naming another rig's build in its result changes nothing of that rig's.
    report_operation(alpha, operation, status, message, result={"build_id": theirs.pk})
    assert Build.objects.filter(pk=theirs.pk).exists() and Build.objects.filter(pk=build.pk).exists()
    operation.refresh_from_db()
    assert operation.is_terminal

    again = services.delete_build(Build.objects.get(pk=build.pk), None)
    report_operation(alpha, again, status, message, result={"build_id": build.pk})
    assert Build.objects.filter(pk=build.pk).exists() == stays
    if stays:
        assert Build.objects.get(pk=build.pk).message == f"not deleted: {message}"


def test_it_leaves_builds_alone_for_other_kinds_of_operation(alpha):
    build = start_build(alpha[0])
    ping = Operation.objects.create(node=alpha[0], kind=Operation.PING)
    Build.objects.filter(pk=build.pk).update(operation=ping)
    report_operation(alpha, ping, "succeeded", "pong", RESULT)
    build.refresh_from_db()
    assert (build.status, build.binary_path) == (Build.QUEUED, "")


# --- deployment reports ----------------------------------------------------------------------------------
@pytest.fixture
def deployment(alpha):
    node = alpha[0]
    build = Build.objects.create(node=node, source="/s", ref="b1", status=Build.READY, binary_path=BINARY)
    rig_file = RigFile.objects.create(node=node, path="/m/tiny.gguf", size=1)
    return Deployment.objects.create(node=node, name="tiny", model_file=rig_file, build=build, port=8080)


def server_report(row, **changes):
    return {"deployment": row.pk, "state": "healthy", "pid": 4242, "port": 8080, "host": "127.0.0.1",
            "started_at": time.time() - 30, "restarts": 1, "message": "healthy (0.07 s after launch)",
            "log": "main: server is listening on http://127.0.0.1:8080", "generation": 1, "desired": "running",
            "binary": BINARY, **changes}


def test_it_records_what_the_rig_says_about_its_server(alpha, deployment):
    node, token = alpha
    started = time.time() - 30
    assert handle_report("alpha", token, "deployment", server_report(deployment, started_at=started)) is None
    deployment.refresh_from_db()
    assert (deployment.actual_state, deployment.pid, deployment.restarts, deployment.message) == (
        "healthy", 4242, 1, "healthy (0.07 s after launch)")
    assert abs(deployment.started_at.timestamp() - started) < 0.001
    assert deployment.log_tail == "main: server is listening on http://127.0.0.1:8080"
    assert deployment.reported_at is not None
    assert 29 <= deployment.uptime.total_seconds() < 60

    assert handle_report("alpha", token, "deployment", server_report(
        deployment, state="failed", pid=None, started_at=None, message="crashed 5 times in 10 min")) is None
    deployment.refresh_from_db()
    assert (deployment.actual_state, deployment.pid, deployment.started_at, deployment.uptime) == (
        "failed", None, None, None)


def test_it_ignores_a_report_about_another_rigs_deployment(alpha, deployment):
    _beta, beta_token = make_node("beta")
    assert handle_report("beta", beta_token, "deployment", server_report(deployment, state="stopped")) is None
    deployment.refresh_from_db()
    assert deployment.actual_state == "pending" and deployment.reported_at is None


@pytest.mark.parametrize("changes, reason", [
    ({"state": "exploded"}, "deployment state 'exploded' is not one of"),
    ({"state": None}, "deployment state None is not one of"),
    ({"deployment": "1; DROP TABLE"}, "deployment must be a number"),
    ({"deployment": 0}, "deployment=0 is outside"),
    ({"pid": -5}, "pid=-5 is outside"),
    ({"pid": "4242"}, "pid must be a number"),
    ({"restarts": 1.5}, "restarts must be a whole number"),
    ({"started_at": float("nan")}, "started_at is not finite"),
    ({"message": ["not", "text"]}, "message must be text"),
    ({"message": "bad\x00byte"}, "message contains a NUL character"),
    ({"log": 42}, "log must be text"),
])
def test_it_rejects_a_malformed_deployment_report_and_writes_nothing(alpha, deployment, changes, reason):
    _node, token = alpha
    before = Deployment.objects.filter(pk=deployment.pk).values().get()
    rejected = handle_report("alpha", token, "deployment", server_report(deployment, **changes))
    assert rejected is not None and rejected.startswith("malformed deployment report: ") and reason in rejected
    assert Deployment.objects.filter(pk=deployment.pk).values().get() == before


def test_it_rejects_a_deployment_report_with_a_wrong_token(alpha, deployment):
    rejected = handle_report("alpha", "not-the-token-at-all", "deployment", server_report(deployment))
    assert rejected == "bad report signature (agent token rejected)"
    deployment.refresh_from_db()
    assert deployment.actual_state == "pending"


def test_it_keeps_only_the_end_of_a_long_log_without_nul_bytes(alpha, deployment):
    _node, token = alpha
    log = "x" * 20_000 + "\x00last line"
    assert handle_report("alpha", token, "deployment", server_report(deployment, log=log)) is None
    deployment.refresh_from_db()
    assert len(deployment.log_tail) < 8000 and deployment.log_tail.endswith("last line")
    assert "\x00" not in deployment.log_tail


def test_it_counts_a_deployment_report_as_a_sign_of_life(alpha, deployment):
    node, token = alpha
    handle_report("alpha", token, "deployment", server_report(deployment))
    node.refresh_from_db()
    assert node.last_seen is not None and timezone.now() - node.last_seen < timezone.timedelta(seconds=5)


def test_it_keeps_each_unplanned_exit_of_a_rigs_own_server(alpha, deployment):
    from hosting.models import ServerExit

    node, token = alpha
    crashed_at = time.time() - 30
    event = {"deployment": deployment.pk, "at": crashed_at, "uptime": 3 * 3600 + 12 * 60 + 5, "restart_in": 1.0,
             "exit_code": None, "signal": 9, "log": "srv  update_slots: all slots are idle\x00"}
    assert handle_report("alpha", token, "server_exit", event) is None
    row = ServerExit.objects.get()
    assert (row.deployment, row.signal, row.how) == (deployment, 9, "SIGKILL")
    assert row.summary == "crashed (SIGKILL) after 3 h 12 min; restarted 1 s later"
    assert abs(row.at.timestamp() - crashed_at) < 1 and "\x00" not in row.log_tail
    assert handle_report("alpha", token, "server_exit", {**event, "signal": None, "exit_code": 1,
                                                          "restart_in": None}) is None
    assert ServerExit.objects.first().summary.endswith("exit code 1) after 3 h 12 min; not restarted: it kept crashing")

    # Another rig cannot write into this rig's history.
    _beta, beta_token = make_node("beta")
    assert handle_report("beta", beta_token, "server_exit", event) is None
    assert ServerExit.objects.count() == 2
    assert "signal=99 is outside" in handle_report("alpha", token, "server_exit", {**event, "signal": 99})
