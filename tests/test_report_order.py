"""Reports applied in the rig's order, whatever order they arrive in, and acknowledged once applied
(nodes/ingest.py, the per-object `report_seq`). Reports sent again by the rig's outbox change nothing."""

import time

import pytest

from hosting.models import ServerExit
from models_catalog.models import RigFile
from nodes import ingest
from nodes.agent import protocol
from nodes.models import Node, Operation
from tests.helpers import make_node, queued_messages, raw_messages, signed_report
from tests.test_hosting_ingest import deployment, server_report  # noqa: F401  (a fixture, and its reports)

pytestmark = pytest.mark.django_db

@pytest.fixture
def alpha():
    return make_node("alpha")


def apply(rig, kind, payload, seq, ack=False):
    node, token = rig
    return ingest.handle_report(**signed_report(node.name, token, kind, payload, seq=seq, ack=ack))


def test_a_late_progress_report_never_overwrites_a_newer_one_nor_an_outcome(alpha):
    node, _token = alpha
    op = Operation.objects.create(node=node, kind=Operation.DOWNLOAD_MODEL)
    progress = lambda done: {"operation": op.pk, "status": "running",  # noqa: E731
                             "progress": {"done": done, "total": 100, "unit": "B"}}
    apply(alpha, "operation", progress(60), seq=20)
    apply(alpha, "operation", progress(30), seq=10)  # sent earlier, arrived later
    op.refresh_from_db()
    assert (op.progress_done, op.report_seq) == (60, 20)
    apply(alpha, "operation", {"operation": op.pk, "status": "succeeded", "message": "downloaded"}, seq=30)
    apply(alpha, "operation", {"operation": op.pk, "status": "succeeded", "message": "downloaded"}, seq=30)  # again
    apply(alpha, "operation", progress(90), seq=25)
    op.refresh_from_db()
    assert (op.status, op.progress_done, op.message, op.report_seq) == ("succeeded", 60, "downloaded", 30)


def test_a_stale_starting_report_applied_after_healthy_does_not_win(alpha, deployment):
    apply(alpha, "deployment", server_report(deployment, state="healthy"), seq=51)
    apply(alpha, "deployment", server_report(deployment, state="starting"), seq=50)
    deployment.refresh_from_db()
    assert (deployment.actual_state, deployment.report_seq) == ("healthy", 51)
    # An inventory made before the last report does not move it back either; a newer one does move it.
    inventory = {"boot": False, "operations": [], "deployments": [server_report(deployment, state="loading")]}
    apply(alpha, "inventory", inventory, seq=49)
    deployment.refresh_from_db()
    assert deployment.actual_state == "healthy"
    apply(alpha, "inventory", {**inventory, "deployments": [server_report(deployment, state="backoff")]}, seq=60)
    deployment.refresh_from_db()
    assert (deployment.actual_state, deployment.report_seq) == ("backoff", 60)


def test_a_server_exit_sent_twice_is_one_row(alpha, deployment):
    event = {"deployment": deployment.pk, "at": time.time() - 5, "uptime": 3600.0, "restart_in": 1.0,
             "exit_code": None, "signal": 9, "log": "last words"}
    apply(alpha, "server_exit", event, seq=70, ack=True)
    apply(alpha, "server_exit", event, seq=70, ack=True)
    apply(alpha, "server_exit", {**event, "at": time.time()}, seq=71)
    assert ServerExit.objects.filter(deployment=deployment).count() == 2


def file_entry(path, size):
    return {"path": path, "size": size, "sha256": "", "verified": False, "repo_id": "", "filename": "",
            "facts": {}, "facts_error": "", "shard_paths": []}


def test_model_file_reports_apply_per_file_in_the_rigs_order(alpha):
    node, _token = alpha
    apply(alpha, "model_files", {"mode": "upsert", "files": [file_entry("/m/a.gguf", 200)]}, seq=82)
    apply(alpha, "model_files", {"mode": "upsert", "files": [file_entry("/m/a.gguf", 100)]}, seq=81)  # older
    apply(alpha, "model_files", {"mode": "upsert", "files": [file_entry("/m/b.gguf", 5)]}, seq=80)  # other file
    assert {f.path: f.size for f in RigFile.objects.filter(node=node)} == {"/m/a.gguf": 200, "/m/b.gguf": 5}
    # A scan made before a.gguf's last report does not drop it; it drops b.gguf, reported before the scan.
    apply(alpha, "model_files", {"mode": "replace", "files": []}, seq=81)
    assert {f.path for f in RigFile.objects.filter(node=node)} == {"/m/a.gguf"}
    apply(alpha, "model_files", {"mode": "remove", "files": [{"path": "/m/a.gguf"}]}, seq=90)
    assert not RigFile.objects.filter(node=node).exists()


def test_a_kept_report_is_acknowledged_to_its_rig_once_applied(alpha, django_capture_on_commit_callbacks):
    node, _token = alpha
    op = Operation.objects.create(node=node, kind=Operation.PING)
    with django_capture_on_commit_callbacks(execute=True):
        apply(alpha, "operation", {"operation": op.pk, "status": "succeeded"}, seq=101, ack=True)
        apply(alpha, "operation", {"operation": op.pk, "status": "succeeded"}, seq=101, ack=True)  # sent again
        apply(alpha, "operation", {"operation": op.pk, "status": "running", "progress": None}, seq=102)  # not kept
        apply(alpha, "operation", {"operation": op.pk, "status": "bogus"}, seq=103, ack=True)  # malformed
    acks = [m for m in queued_messages(node.queue) if m.task == protocol.AGENT_ACK]
    assert sorted(m.kwargs["seqs"] for m in acks) == [[101], [101], [103]]
    # A forged report is not acknowledged at all; beta's report about alpha's operation only to beta.
    forged = signed_report("alpha", "not-alpha's-token-at-all", "operation", {"operation": op.pk, "status": "failed"},
                           seq=104, ack=True)
    beta = make_node("beta")
    with django_capture_on_commit_callbacks(execute=True):
        assert ingest.handle_report(**forged) == "bad report signature (agent token rejected)"
        apply(beta, "operation", {"operation": op.pk, "status": "failed"}, seq=105, ack=True)
    assert queued_messages(node.queue) == []
    assert [m.kwargs["seqs"] for m in queued_messages(beta[0].queue)] == [[105]]


def test_no_acknowledgement_goes_to_a_rig_removed_before_its_report_was_applied(alpha):
    """A report applied while the rig is being removed: its queue was purged with its account and stays gone."""
    node, _token = alpha
    ingest.acknowledge(node, 201)
    assert [m.kwargs["seqs"] for m in queued_messages(node.queue)] == [[201]]
    Node.objects.filter(pk=node.pk).delete()
    ingest.acknowledge(node, 202)
    assert raw_messages(node.queue) == []
