"""Starting an operation on a rig, its page and its polling partial, and the operations list."""

import re

import pytest
from django.conf import settings
from django.utils import timezone

from nodes.models import Operation
from tests.helpers import make_node, page, queued_messages

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}



def drain(queue):
    """(task name, args, expires) of the messages waiting on `queue` in this process's memory:// broker."""
    return [(m.task, m.args, m.expires) for m in queued_messages(queue)]


@pytest.fixture
def alpha():
    node, _token = make_node("alpha")
    drain(node.queue)
    yield node
    drain(node.queue)


def listed(response):
    return {int(pk) for pk in re.findall(r'<a href="/operations/(\d+)/">', response.content.decode())}


# --- who may see and do what ---------------------------------------------------------------------
def test_it_sends_anonymous_visitors_to_the_login_page(client, alpha):
    operation = Operation.objects.create(node=alpha, kind=Operation.PING)
    for url in ("/operations/", operation.get_absolute_url()):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/?next="), url
    response = client.post("/rigs/alpha/operations/ping/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert Operation.objects.count() == 1


@pytest.mark.parametrize("kind", [Operation.REFRESH_HARDWARE, Operation.PING])
def test_it_refuses_a_viewers_forged_operation(viewer_client, alpha, kind, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = viewer_client.post(f"/rigs/alpha/operations/{kind}/")
    assert response.status_code == 403
    assert not Operation.objects.exists()
    assert drain(alpha.queue) == []


def test_it_lets_a_viewer_follow_operations(viewer_client, alpha):
    operation = Operation.objects.create(node=alpha, kind=Operation.PING)
    assert viewer_client.get("/operations/").status_code == 200
    assert viewer_client.get(operation.get_absolute_url()).status_code == 200


# --- starting one --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, task", [(Operation.REFRESH_HARDWARE, "agent.refresh_hardware"),
                                        (Operation.PING, "agent.ping")])
def test_it_queues_an_operation_for_the_rig_and_shows_its_page(operator_client, operator, alpha, kind, task,
                                                               django_capture_on_commit_callbacks):
    beta, _token = make_node("beta")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = operator_client.post(f"/rigs/alpha/operations/{kind}/")

    operation = Operation.objects.get()
    assert (operation.node, operation.kind, operation.status, operation.requested_by) == (
        alpha, kind, Operation.QUEUED, operator)
    assert response.status_code == 302 and response["Location"] == operation.get_absolute_url()
    assert len(callbacks) == 1
    sent = drain(alpha.queue)
    assert [(name, args) for name, args, _expires in sent] == [(task, [operation.pk])]
    assert sent[0][2] is not None  # expires, so a dead rig's queue does not pile up
    assert drain(beta.queue) == []


def test_it_sends_nothing_to_the_rig_until_the_operation_is_committed(operator_client, alpha,
                                                                      django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        operator_client.post("/rigs/alpha/operations/ping/")
    assert len(callbacks) == 1
    assert drain(alpha.queue) == []


def test_it_refuses_an_unknown_operation_kind(operator_client, alpha):
    assert operator_client.post("/rigs/alpha/operations/format-disk/").status_code == 404
    assert operator_client.post("/rigs/ghost/operations/ping/").status_code == 404
    assert not Operation.objects.exists()


def test_it_refuses_to_start_an_operation_with_a_get(operator_client, alpha):
    assert operator_client.get("/rigs/alpha/operations/ping/").status_code == 405
    assert not Operation.objects.exists()


# --- its page and polling partial ---------------------------------------------------------------
def test_it_keeps_polling_while_the_operation_is_not_finished(operator_client, alpha):
    operation = Operation.objects.create(node=alpha, kind=Operation.REFRESH_HARDWARE)
    response = operator_client.get(operation.get_absolute_url(), **HTMX)
    assert response.status_code == 200
    assert 'data-status="queued"' in page(response)
    assert "<html" not in page(response)

    operation.apply_report(Operation.RUNNING, "probing hardware")
    response = operator_client.get(operation.get_absolute_url(), **HTMX)
    assert response.status_code == 200
    assert 'data-status="running"' in page(response) and "probing hardware" in page(response)


@pytest.mark.parametrize("status", [Operation.SUCCEEDED, Operation.FAILED, Operation.CANCELLED])
def test_it_stops_the_poll_once_the_operation_is_finished(operator_client, alpha, status):
    operation = Operation.objects.create(node=alpha, kind=Operation.PING)
    operation.apply_report(status, "agent answered")
    response = operator_client.get(operation.get_absolute_url(), **HTMX)
    assert response.status_code == 286
    assert f'data-status="{status}"' in page(response)
    assert "agent answered" in page(response)


def test_it_shows_the_whole_page_without_htmx(operator_client, operator, alpha):
    operation = Operation.objects.create(node=alpha, kind=Operation.PING, requested_by=operator)
    operation.apply_report(Operation.SUCCEEDED, "agent answered", {"node": "alpha"})
    response = operator_client.get(operation.get_absolute_url())
    content = page(response)
    assert response.status_code == 200
    assert "<html" in content and "Ping agent on" in content
    assert 'hx-get="/operations/' in content
    assert "olga" in content and "agent answered" in content


def test_it_answers_404_for_an_operation_that_does_not_exist(operator_client):
    assert operator_client.get("/operations/999999/").status_code == 404


# --- the list ------------------------------------------------------------------------------------
@pytest.fixture
def history(alpha, operator):
    beta, _token = make_node("beta")
    ops = {
        "alpha-ping-ok": Operation.objects.create(node=alpha, kind=Operation.PING, requested_by=operator),
        "alpha-refresh-queued": Operation.objects.create(node=alpha, kind=Operation.REFRESH_HARDWARE),
        "beta-ping-failed": Operation.objects.create(node=beta, kind=Operation.PING),
        "beta-refresh-ok": Operation.objects.create(node=beta, kind=Operation.REFRESH_HARDWARE),
    }
    ops["alpha-ping-ok"].apply_report(Operation.SUCCEEDED, "agent answered")
    ops["beta-ping-failed"].apply_report(Operation.FAILED, "the rig's agent did not pick this up")
    ops["beta-refresh-ok"].apply_report(Operation.SUCCEEDED, "2 GPUs detected")
    return {name: op.pk for name, op in ops.items()}


def test_it_lists_every_operation_with_who_asked_and_the_outcome(operator_client, history):
    response = operator_client.get("/operations/")
    assert listed(response) == set(history.values())
    content = page(response)
    assert "olga" in content and "system" in content
    assert "2 GPUs detected" in content


@pytest.mark.parametrize(
    "query, expected",
    [
        ("node=alpha", {"alpha-ping-ok", "alpha-refresh-queued"}),
        ("kind=ping", {"alpha-ping-ok", "beta-ping-failed"}),
        ("status=succeeded", {"alpha-ping-ok", "beta-refresh-ok"}),
        ("node=beta&kind=refresh_hardware&status=succeeded", {"beta-refresh-ok"}),
        ("node=alpha&status=failed", set()),
        ("node=", {"alpha-ping-ok", "alpha-refresh-queued", "beta-ping-failed", "beta-refresh-ok"}),
    ],
)
def test_it_filters_operations_by_rig_kind_and_status(operator_client, history, query, expected):
    response = operator_client.get(f"/operations/?{query}")
    assert response.status_code == 200
    assert listed(response) == {history[name] for name in expected}
    if not expected:
        assert "No operations match." in page(response)


def test_it_keeps_the_chosen_filters_selected(operator_client, history):
    content = page(operator_client.get("/operations/?node=beta&status=failed"))
    assert '<option value="beta" selected>' in content
    assert '<option value="failed" selected>' in content


def test_it_fails_an_operation_that_waited_past_the_pickup_timeout_on_its_page(operator_client, alpha):
    # What a provider sees when the rig was offline: the row fails instead of waiting forever.
    from nodes.tasks import expire_operations

    old = timezone.now() - timezone.timedelta(seconds=settings.OPERATION_PICKUP_TIMEOUT + 1)
    operation = Operation.objects.create(node=alpha, kind=Operation.PING, created=old)
    expire_operations()
    response = operator_client.get(operation.get_absolute_url(), **HTMX)
    assert response.status_code == 286
    assert "did not pick this up within" in page(response)
