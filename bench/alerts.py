"""Alert latency against real processes, and the cost of one alerts run at fleet size.

    .venv/bin/python bench/alerts.py                       # shipped defaults: telemetry 5 s, alerts every 15 s
    .venv/bin/python bench/alerts.py --interval 1 --check 1 --rounds 5
    .venv/bin/python bench/alerts.py --rounds 0 --rigs 200 # only the run's cost at 200 rigs × 8 GPUs

(a) A throwaway Redis, a real panel worker and beat, one real rig agent, an SMTP server (aiosmtpd) and a webhook
receiver in threads. Each round stops the agent and times until the "rig offline" mail and webhook arrive, then
starts it and times until the resolution arrives. The floor is the offline threshold (5 telemetry intervals after the
last report); the alerts interval adds up to one period on top.
(b) In process: a steady alerts run (nothing changes) over `--rigs` rigs with 8 GPUs, a deployment and a router
each, every rule enabled: its query count and median time over 10 runs.
"""

import argparse
import secrets
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _django  # noqa: E402


def latency(workdir, interval, check, rounds):
    from alerts.models import Channel
    from morpheus_admin import localredis
    from morpheus_admin.celery import app
    from nodes import broker
    from nodes.models import Node
    from tests import harness
    from tests.alertkit import SmtpSink, WebhookReceiver
    from django.conf import settings

    redis_proc, redis_url = localredis.start(workdir / "redis", password=secrets.token_hex(16),
                                             log_path=workdir / "redis.log")
    app.conf.broker_url = settings.CELERY_BROKER_URL = settings.RIG_BROKER_URL = redis_url
    smtp, hook = SmtpSink().start(), WebhookReceiver().start()
    Channel.objects.create(name="mail", kind="email", target="ops@example.com")
    Channel.objects.create(name="hook", kind="webhook", target=hook.url())
    env = harness.panel_env(redis_url, __import__("os").environ["DATABASE_URL"], MORPHEUS_LOG_LEVEL="WARNING",
                            MORPHEUS_ALERT_CHECK_INTERVAL=check, MORPHEUS_STATUS_CHECK_INTERVAL=min(check, 10),
                            EMAIL_PORT=smtp.port)
    worker = harness.panel_worker(env, workdir).start()
    scheduler = harness.beat(env, workdir).start()
    node = Node(name="bench-rig")
    token = node.set_new_token()
    node.save()
    broker.ensure_account("bench-rig", token)
    worker.wait_for_log("ready.", timeout=60)
    rows = []
    try:
        for n in range(rounds):
            agent = harness.agent("bench-rig", token, redis_url, workdir / "rig", workdir, interval=interval).start()
            agent.wait_for_log("ready.", timeout=60)
            if n:
                started = time.time()
                _django.wait_until(lambda: len(hook.posts) == 2 * n, 600, "the resolution", every=0.05)
                rows[-1] += (hook.posts[-1][0] - started,)
            _django.wait_until(lambda: Node.objects.get(pk=node.pk).status == Node.ONLINE, 60, "online", every=0.05)
            time.sleep(2 * interval)
            agent.stop(timeout=20)
            stopped = time.time()
            _django.wait_until(lambda: len(hook.posts) == 2 * n + 1 and len(smtp.messages) == 2 * n + 1, 600,
                               "the offline alert", every=0.05)
            rows.append((hook.posts[-1][0] - stopped, smtp.messages[-1][0] - stopped))
        if rounds:
            agent = harness.agent("bench-rig", token, redis_url, workdir / "rig", workdir, interval=interval).start()
            started = time.time()
            _django.wait_until(lambda: len(hook.posts) == 2 * rounds, 600, "the last resolution", every=0.05)
            rows[-1] += (hook.posts[-1][0] - started,)
            agent.stop(timeout=20)
    finally:
        scheduler.stop()
        worker.stop()
        smtp.stop()
        hook.stop()
        redis_proc.terminate()
    print(f"telemetry interval {interval:g} s (offline after {5 * interval:g} s), alerts every {check:g} s")
    print("round  stop→webhook  stop→mail  start→resolved webhook")
    for n, (webhook, mail, resolved) in enumerate(rows, 1):
        print(f"{n:5}  {webhook:10.1f} s  {mail:7.1f} s  {resolved:10.1f} s")
    if rows:
        print(f"median {statistics.median(r[0] for r in rows):8.1f} s  {statistics.median(r[1] for r in rows):7.1f} s"
              f"  {statistics.median(r[2] for r in rows):10.1f} s   sent: {len(hook.posts)} webhooks, "
              f"{len(smtp.messages)} mails for {rounds} outages")


def run_cost(rigs):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from alerts import evaluate
    from alerts.models import Alert, Rule
    from hosting.models import Build, Deployment
    from marketplace.models import Router
    from models_catalog.models import RigFile
    from nodes.models import GPU, Node

    Rule.objects.update(enabled=True, for_minutes=0)
    now = timezone.now()
    nodes = Node.objects.bulk_create([Node(name=f"rig-{n:03d}", last_seen=now, clock_offset=0.5,
                                           hardware={"disk_total": 10**12}, host_reading={"disk_free": 5 * 10**11})
                                      for n in range(rigs)])
    hot = [GPU(node=node, index=i, uuid=f"{node.name}-{i}", name="RTX 3090", vram_total=24 * 1024**3,
               vram_used=(23 if i == 0 else 10) * 1024**3, temp_c=90 if i == 0 else 60, reading_at=now)
           for node in nodes for i in range(8)]
    GPU.objects.bulk_create(hot)
    for node in nodes:
        build = Build.objects.create(node=node, status=Build.READY, binary_path="/opt/llama-server")
        rig_file = RigFile.objects.create(node=node, path="/models/m.gguf", size=1)
        Deployment.objects.create(node=node, name="d", model_file=rig_file, build=build, port=8080,
                                  actual_state="healthy")
        Router.objects.create(node=node, binary_path="/opt/r", state="healthy")
    evaluate.run()  # opens one GPU-hot and one VRAM alert per rig
    times = []
    for _ in range(10):
        Node.objects.update(last_seen=timezone.now())
        start = time.perf_counter()
        with CaptureQueriesContext(connection) as queries:
            evaluate.run()
        times.append(time.perf_counter() - start)
    print(f"{rigs} rigs × 8 GPUs, {Alert.objects.filter(resolved_at=None).count()} open alerts: a steady run costs "
          f"{len(queries)} queries, median {1000 * statistics.median(times):.0f} ms "
          f"(max {1000 * max(times):.0f} ms)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=5.0, help="the agent's telemetry interval, seconds")
    parser.add_argument("--check", type=float, default=15.0, help="MORPHEUS_ALERT_CHECK_INTERVAL, seconds")
    parser.add_argument("--rounds", type=int, default=3, help="agent stops to time (0: skip)")
    parser.add_argument("--rigs", type=int, default=200, help="rigs for the run's cost (0: skip)")
    args = parser.parse_args()
    workdir = _django.setup()
    if args.rounds:
        latency(workdir, args.interval, args.check, args.rounds)
    if args.rigs:
        run_cost(args.rigs)


if __name__ == "__main__":
    main()
