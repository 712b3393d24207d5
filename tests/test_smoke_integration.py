import pytest

from nodes.models import Node
from tests.conftest import make_node
from tests.harness import wait_until

pytestmark = pytest.mark.integration


def test_it_shows_hardware_and_telemetry_from_a_real_agent(rigs):
    node, token = make_node("alpha")
    rigs.start("alpha", token, fake_nvml="2x3090")
    wait_until(lambda: Node.objects.get(pk=node.pk).gpus.filter(util__isnull=False).count() == 2, message="2 GPUs")
    node.refresh_from_db()
    assert node.status == Node.ONLINE
    assert [g.name for g in node.gpus.all()] == ["NVIDIA GeForce RTX 3090"] * 2
