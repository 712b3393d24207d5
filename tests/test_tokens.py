import hmac

import pytest

from nodes import models
from nodes.models import Node
from tests.conftest import make_node

pytestmark = pytest.mark.django_db


def test_it_accepts_the_token_it_issued():
    node, token = make_node("alpha")
    assert Node.objects.get(pk=node.pk).check_token(token)


def test_it_stores_the_token_hashed_and_never_in_the_clear():
    node, token = make_node("alpha")
    row = Node.objects.filter(pk=node.pk).values().get()
    assert all(token not in str(value) for value in row.values())
    assert row["token_hash"] and row["token_hash"] != token


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


def test_it_rejects_every_token_when_no_hash_is_stored():
    node = Node(name="blank")
    assert not node.check_token("")
    assert not node.check_token("anything-at-all")


def test_it_compares_in_constant_time(monkeypatch):
    calls, real = [], hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(models.hmac, "compare_digest", spy)
    node, token = make_node("alpha")
    assert node.check_token(token)
    assert not node.check_token("wrong-token-wrong-token-wrong")
    assert len(calls) == 2
    # Digests are compared, never the raw token.
    assert all(token not in (a, b) for a, b in calls)


def test_it_stops_accepting_the_old_token_once_rotated():
    node, old = make_node("alpha")
    new = node.set_new_token()
    node.save(update_fields=["token_hash"])
    stored = Node.objects.get(pk=node.pk)
    assert new != old
    assert stored.check_token(new)
    assert not stored.check_token(old)
