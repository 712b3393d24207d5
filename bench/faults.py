"""Faults one after another against real processes, and one table: fault, time to recover, operations lost,
duplicates.

    .venv/bin/python bench/faults.py                 # Redis away 60 s per broker fault (the issue's case)
    .venv/bin/python bench/faults.py --outage 10     # shorter

A throwaway Redis (admin password, AOF on, as `scripts/run` keeps it), a real panel worker, one real rig agent and
the Hub stand-in of the tests. Each fault runs operations through it; "recovered" is measured from the end of the
fault (Redis back, worker started again) until every operation of that fault has its outcome in the panel's
database. "lost" counts operations that did not end as they should have (or never ended); "duplicates" counts
commands the agent received more than once and server exits recorded twice. The baseline row is the same
operations with no fault.
"""

import argparse
import secrets
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _django  # noqa: E402

MiB = 1024 * 1024


class Setup:
    def __init__(self, workdir):
        from morpheus_admin import localredis
        from morpheus_admin.celery import app
        from nodes import broker
        from nodes.models import Node
        from tests import harness
        from tests.hubstub import Hub

        self.workdir = Path(workdir)
        self.port, self.password = localredis.free_port(), secrets.token_hex(16)
        self.start_redis()
        app.conf.broker_url = self.redis_url
        from django.conf import settings

        settings.CELERY_BROKER_URL = settings.RIG_BROKER_URL = self.redis_url
        self.hub = Hub().start()
        settings.HF_ENDPOINT = self.hub.url
        env = harness.panel_env(self.redis_url, __import__("os").environ["DATABASE_URL"],
                                MORPHEUS_LOG_LEVEL="WARNING", HF_ENDPOINT=self.hub.url)
        self.worker = harness.panel_worker(env, self.workdir).start()
        self.node = Node(name="bench-rig")
        self.token = self.node.set_new_token()
        self.node.save()
        broker.ensure_account("bench-rig", self.token)
        self.worker.wait_for_log("ready.", timeout=60)
        self.agent = harness.agent("bench-rig", self.token, self.redis_url, self.workdir / "rig", self.workdir,
                                   interval=2.0).start()
        self.agent.wait_for_log("ready.", timeout=60)
        _django.wait_until(lambda: Node.objects.get(pk=self.node.pk).last_seen, 30, "the rig's first report")

    def start_redis(self):
        from morpheus_admin import localredis

        self.redis_proc, self.redis_url = localredis.start(self.workdir / "redis", port=self.port,
                                                           password=self.password, persist=True,
                                                           log_path=self.workdir / "redis.log")

    def redis_outage(self, seconds):
        """Kill Redis, keep it away, start it on the same port, recreate the rig account (the panel does it every
        minute). Returns the moment it was back."""
        from nodes import rigs
        from nodes.models import Node

        self.redis_proc.kill()
        self.redis_proc.wait(timeout=10)
        time.sleep(seconds)
        self.start_redis()
        back = time.monotonic()
        _django.wait_until(lambda: "error" not in rigs.sync_accounts(Node.objects.all()), 30, "accounts back")
        return back

    def received(self, task):
        return self.agent.log().count(f"Task {task}[")  # "received" and "succeeded": two lines per run

    def stop(self):
        self.agent.stop(timeout=20)
        self.worker.stop()
        self.redis_proc.terminate()
        self.hub.stop()


def pings(setup, count=10):
    from nodes.agent import protocol
    from nodes.channel import send_command
    from nodes.models import Operation

    ops = [Operation.objects.create(node=setup.node, kind=Operation.PING) for _ in range(count)]
    for op in ops:
        send_command(setup.node, protocol.AGENT_PING, operation=op.pk)
    return ops


def download(setup, mib, rate_mib):
    from models_catalog.downloads import request_download
    from models_catalog.models import CatalogModel, ModelFile
    from tests.gguf_model import write_tiny_llama

    name = f"f{time.monotonic_ns()}"
    path = write_tiny_llama(setup.workdir / f"{name}.gguf", chat_template="{{ bos_token }}", pad_to=mib * MiB)
    served = setup.hub.add_file(f"bench/{name}", f"{name}-Q8_0.gguf", path)
    setup.hub.add_repo(f"bench/{name}")
    served.rate = rate_mib * MiB
    model = CatalogModel.objects.create(repo_id=f"bench/{name}", name=name)
    model_file = ModelFile.objects.create(model=model, filename=f"{name}-Q8_0.gguf", size=path.stat().st_size)
    return request_download(model_file, setup.node, None)


def ended(ops, timeout):
    from nodes.models import Operation

    ids = [op.pk for op in ops]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = list(Operation.objects.filter(pk__in=ids))
        if all(op.is_terminal for op in rows):
            return rows
        time.sleep(0.05)
    return list(Operation.objects.filter(pk__in=ids))


def outcome(name, ops, start, timeout, received_before, setup, task, expected_runs):
    rows = ended(ops, timeout)
    recovered = time.monotonic() - start
    lost = sum(1 for op in rows if op.status != "succeeded")
    runs = (setup.received(task) - received_before) // 2
    return name, recovered if not lost else None, lost, max(0, runs - expected_runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outage", type=float, default=60.0, help="seconds Redis stays away in each broker fault")
    args = parser.parse_args()

    workdir = _django.setup()
    from nodes.agent import protocol

    setup = Setup(workdir)
    rows = []
    try:
        # Baseline: ten pings with nothing wrong.
        before, start = setup.received(protocol.AGENT_PING), time.monotonic()
        rows.append(outcome("none (baseline: 10 pings)", pings(setup), start, 60, before, setup,
                            protocol.AGENT_PING, 10))

        # Redis away while the rig is idle; then ten pings must work.
        back = setup.redis_outage(args.outage)
        before = setup.received(protocol.AGENT_PING)
        rows.append(outcome(f"Redis down {args.outage:g} s, rig idle", pings(setup), back, 120, before, setup,
                            protocol.AGENT_PING, 10))

        # Redis away in the middle of a download (32 MiB at 2 MiB/s: it ends during a long outage).
        before = setup.received(protocol.AGENT_DOWNLOAD_MODEL)
        op = download(setup, 32, 2)
        _django.wait_until(lambda: (type(op).objects.get(pk=op.pk).progress_done or 0) > 4 * MiB, 60, "progress")
        back = setup.redis_outage(args.outage)
        rows.append(outcome(f"Redis down {args.outage:g} s mid-download", [op], back, 120, before, setup,
                            protocol.AGENT_DOWNLOAD_MODEL, 1))

        # The panel worker killed (-9) while it applies reports, started again 5 s later.
        before = setup.received(protocol.AGENT_PING)
        ops = pings(setup, 20)
        _django.wait_until(lambda: type(ops[0]).objects.filter(pk__in=[o.pk for o in ops],
                                                                status="succeeded").exists(), 30, "first outcome")
        mark = setup.worker.mark()
        setup.worker.kill(signal.SIGKILL)
        time.sleep(5)
        setup.worker.start()
        setup.worker.wait_for_log("ready.", timeout=60, since=mark)
        rows.append(outcome("panel worker killed mid-ingest", ops, time.monotonic(), 120, before, setup,
                            protocol.AGENT_PING, 20))
    finally:
        setup.stop()

    print(f"{'fault':44} {'recovered in':>13} {'lost':>5} {'duplicates':>11}")
    for name, recovered, lost, duplicates in rows:
        took = "never" if recovered is None else f"{recovered:.1f} s"
        print(f"{name:44} {took:>13} {lost:>5} {duplicates:>11}")
    print("\nrecovered in: from the end of the fault until every operation of it had its outcome in the panel")
    if any(lost or duplicates for _n, _r, lost, duplicates in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
