import pytest

from nodes.models import Node
from tests.helpers import make_node

pytestmark = pytest.mark.django_db


def test_it_accepts_the_token_it_issued():
    node, token = make_node("alpha")
    assert Node.objects.get(pk=node.pk).check_token(token)


def test_it_stores_the_token_sealed_and_never_in_the_clear():
    from django.db import connection

    node, token = make_node("alpha")
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM nodes_node WHERE id = %s", [node.pk])
        row = cursor.fetchone()
    assert all(token not in str(value) for value in row)
    assert any(str(value).startswith("sealed:v1:") for value in row)
    assert Node.objects.get(pk=node.pk).token == token


def test_it_issues_a_different_long_token_each_time():
    tokens = {make_node(f"rig-{i}")[1] for i in range(5)}
    assert len(tokens) == 5
    assert all(len(token) >= 32 for token in tokens)


def test_it_rejects_a_wrong_or_nearly_right_token():
    node, token = make_node("alpha")
    other_node, other_token = make_node("beta")
    assert not node.check_token(other_token)
    assert not node.check_token(token[:-1])
    assert not node.check_token(token + "x")
    assert not node.check_token(token.swapcase())
    assert not node.check_token("")


@pytest.mark.parametrize("forged", [None, 12345, b"bytes", ["list"], {"token": "x"}, True])
def test_it_rejects_tokens_that_are_not_text(forged):
    node, _token = make_node("alpha")
    assert node.check_token(forged) is False


def test_it_rejects_every_token_when_none_is_stored():
    node = Node(name="blank")
    assert not node.check_token("")
    assert not node.check_token("anything-at-all")


def test_it_stops_accepting_the_old_token_once_rotated():
    node, old = make_node("alpha")
    new = node.set_new_token()
    node.save(update_fields=["token"])
    stored = Node.objects.get(pk=node.pk)
    assert new != old
    assert stored.check_token(new)
    assert not stored.check_token(old)
