"""Panel worker ingest, in GPU samples per second (target >= 2,000/s on a 2-core machine).

    .venv/bin/python bench/ingest.py                          # in-process, then through Redis + a real worker
    .venv/bin/python bench/ingest.py --rigs 100 --rounds 20   # 100 rigs × 8 GPUs × 20 rounds = 16,000 samples
    .venv/bin/python bench/ingest.py --pools solo,prefork:2 --skip-inprocess

(a) `nodes.ingest.handle_report` called in this process on agent-shaped telemetry reports.
(b) End to end: a throwaway Redis (morpheus_admin.localredis), a real `celery -A morpheus_admin worker -Q panel`
    process, N reports sent as the agent sends them; timed from the first send until the panel queue is empty
    and nothing is left unacknowledged (acks_late: a message leaves `unacked` only once its task finished).
Each run uses a fresh SQLite file (or --database-url, an empty database).
"""

import argparse
import os
import re
import statistics
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _django  # noqa: E402

TARGET = 2000
GPUS_PER_RIG = 8


def enrol(rigs):
    """Rigs with tokens and a hardware report applied, as after their agents first connected."""
    from nodes import ingest
    from nodes.models import Node

    tokens = {}
    for i in range(rigs):
        node = Node(name=f"rig-{i:04d}")
        tokens[node.name] = node.set_new_token()
        node.save()
        hardware = _django.hardware_payload(GPUS_PER_RIG, interval=5.0)
        for gpu in hardware["gpus"]:
            gpu["uuid"] = f"{gpu['uuid']}-{i}"
        reason = ingest.handle_report(**signed(node.name, tokens[node.name], "hardware", hardware, 1))
        assert reason is None, reason
    return tokens


def signed(name, token, kind, payload, seq, sent_at=None):
    """A report as the agent sends it: signed with the rig's key (nodes/agent/envelope.py)."""
    from nodes.agent import envelope

    return envelope.sign_report(envelope.derive_keys(token), rig=name, kind=kind, payload=payload, seq=seq,
                                now=sent_at)


def reports(tokens, rounds):
    """Telemetry reports in the order a fleet sends them: every rig once per round."""
    base = time.time() - rounds * 5
    for r in range(rounds):
        for i, (name, token) in enumerate(tokens.items()):
            payload = _django.telemetry_payload(base + r * 5, seed=r * 1000 + i, gpus=GPUS_PER_RIG)
            yield signed(name, token, "telemetry", payload, r + 2, sent_at=base + r * 5)


def check_applied(tokens, rounds):
    """Every GPU carries the last round's reading (seed → sm_clock) — or say what is missing."""
    from nodes.models import GPU

    expected = {}
    for i, name in enumerate(tokens):
        for gpu in _django.telemetry_payload(0, seed=(rounds - 1) * 1000 + i, gpus=GPUS_PER_RIG)["gpus"]:
            expected[(name, gpu["index"])] = gpu["sm_clock"]
    actual = {(node, index): clock for node, index, clock in GPU.objects.values_list("node__name", "index", "sm_clock")}
    wrong = sum(1 for key, clock in expected.items() if actual.get(key) != clock)
    return wrong


def in_process(tokens, rounds):
    from nodes import ingest

    batch = list(reports(tokens, rounds))
    cpu_before = time.process_time()
    start = time.perf_counter()
    for report in batch:
        reason = ingest.handle_report(**report)
        assert reason is None, reason
    elapsed = time.perf_counter() - start
    return len(batch), elapsed, time.process_time() - cpu_before


def cpu_seconds(pid):
    """User + system CPU of a process and its children so far (contention-proof, unlike wall time)."""
    import psutil

    proc = psutil.Process(pid)
    total = 0.0
    for each in [proc, *proc.children(recursive=True)]:
        times = each.cpu_times()
        total += times.user + times.system
    return total


def end_to_end(tokens, rounds, pool, workdir, database_url):
    """Send through Redis to a real panel worker; returns (reports, seconds, send seconds, worker CPU s, log)."""
    from celery import Celery
    from morpheus_admin import localredis
    from nodes.agent import protocol

    redis_proc, redis_url = localredis.start(workdir / f"redis-{pool}", log_path=workdir / f"redis-{pool}.log")
    log_path = workdir / f"worker-{pool}.log"
    kind, _, concurrency = pool.partition(":")
    args = [sys.executable, "-m", "celery", "-A", "morpheus_admin", "worker", "-Q", protocol.PANEL_QUEUE,
            "-P", kind, "--hostname", f"bench-{kind}@%h", "--without-gossip", "--without-mingle", "-l", "INFO"]
    if concurrency:
        args += ["-c", concurrency]
    env = dict(os.environ, REDIS_URL=redis_url, DATABASE_URL=database_url, PYTHONUNBUFFERED="1",
               MORPHEUS_LOG_LEVEL="INFO")  # as in production: a log line per task
    worker = None
    try:
        with open(log_path, "wb") as log:
            worker = subprocess.Popen(args, cwd=_django.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: "ready." in log_path.read_text(errors="replace"), 60, "the panel worker to start", worker)

        # A sender shaped like the agent's: its own Celery app, JSON, the panel queue, an expiry.
        sender = Celery("bench-agents", broker=redis_url, fixups=[])
        sender.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)
        client = sender.connection_for_write().default_channel.client
        batch = list(reports(tokens, rounds))
        cpu_before = cpu_seconds(worker.pid)
        start = time.perf_counter()
        with sender.producer_or_acquire() as producer:
            for report in batch:
                sender.send_task(protocol.REPORT_TASK, kwargs=report, queue=protocol.PANEL_QUEUE, expires=600,
                                 producer=producer)
        sent = time.perf_counter() - start

        def drained():
            return client.llen(protocol.PANEL_QUEUE) == 0 and client.hlen("unacked") == 0

        wait_for(drained, 600, "the panel queue to drain", worker, interval=0.05)
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(worker.pid) - cpu_before
        sender.close()
        return len(batch), elapsed, sent, cpu, log_path.read_text(errors="replace")
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, 15)
            worker.wait(timeout=30)
        redis_proc.terminate()
        redis_proc.wait(timeout=10)


def wait_for(predicate, timeout, what, proc=None, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) while waiting for {what}")
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def fresh_database(args, label):
    """A new SQLite file per measurement, so each starts from the same state."""
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    if args.database_url:
        call_command("flush", "--noinput", verbosity=0)
        call_command("migrate", verbosity=0)
        return args.database_url
    connections.close_all()
    path = Path(settings.DATABASES["default"]["NAME"]).parent / f"{label}.sqlite3"
    settings.DATABASES["default"]["NAME"] = str(path)
    connections["default"].settings_dict["NAME"] = str(path)
    call_command("migrate", verbosity=0)
    return f"sqlite:///{path}"


def line(label, reports_done, seconds, extra=""):
    samples = reports_done * GPUS_PER_RIG
    rate = samples / seconds
    print(f"{label:<34} {reports_done:>7} {samples:>8} {seconds:>8.2f} {rate:>10,.0f} {rate / TARGET:>7.2f}×"
          f"  {reports_done / seconds:>7,.0f}  {extra}")
    return rate


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rigs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--pools", default="solo,prefork:2", help="worker pools to try, e.g. solo,prefork:2")
    parser.add_argument("--database-url", help="an empty database instead of temp SQLite files (it is flushed)")
    parser.add_argument("--skip-inprocess", action="store_true")
    parser.add_argument("--skip-worker", action="store_true")
    args = parser.parse_args(argv)

    workdir = _django.setup(args.database_url)
    try:
        from django.db import connection

        total = args.rigs * GPUS_PER_RIG * args.rounds
        print(f"database: {connection.vendor}; {args.rigs} rigs × {GPUS_PER_RIG} GPUs × {args.rounds} rounds = "
              f"{total:,} GPU samples ({args.rigs * args.rounds:,} telemetry reports); target {TARGET:,}/s; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
        print(f"\n{'measurement':<34} {'reports':>7} {'samples':>8} {'seconds':>8} {'samples/s':>10} {'vs tgt':>8}"
              f"  {'rep/s':>7}")
        if not args.skip_inprocess:
            fresh_database(args, "inprocess")
            tokens = enrol(args.rigs)
            done, seconds, cpu = in_process(tokens, args.rounds)
            wrong = check_applied(tokens, args.rounds)
            line("(a) handle_report in-process", done, seconds,
                 f"wall {seconds / done * 1000:.1f} ms and CPU {cpu / done * 1000:.1f} ms per report; "
                 f"GPUs not at last reading: {wrong}")
        if not args.skip_worker:
            for pool in args.pools.split(","):
                database_url = fresh_database(args, f"worker-{pool.replace(':', '-')}")
                tokens = enrol(args.rigs)
                from django.db import connections

                connections.close_all()  # the worker is the only writer while it runs
                done, seconds, sent, cpu, log = end_to_end(tokens, args.rounds, pool, workdir, database_url)
                wrong = check_applied(tokens, args.rounds)
                errors = log.count("rejected") + log.count("ERROR")
                # Celery logs each task's own run time: the rest of the wall time is the worker's overhead.
                runtimes = [float(t) for t in re.findall(r"succeeded in ([0-9.e-]+)s", log)]
                inside = f"task body median {statistics.median(runtimes) * 1000:.1f} ms" if runtimes else ""
                line(f"(b) Redis + worker -P {pool}", done, seconds,
                     f"{inside}; wall {seconds / done * 1000:.1f} ms and worker CPU {cpu / done * 1000:.1f} ms"
                     f" per report (= {done * GPUS_PER_RIG / cpu:,.0f} samples per worker CPU-second); send {sent:.2f}s; "
                     f"GPUs not at last reading: {wrong}; rejected/errors in log: {errors}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
