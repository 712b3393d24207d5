"""/metrics benchmark: queries, server time and size of one Prometheus scrape with simulated rigs × 8 GPUs, against
the dashboard's full page rendered from the same database.

    .venv/bin/python bench/metrics.py                  # 10, 50, 200 rigs; 20 scrapes each
    .venv/bin/python bench/metrics.py --rigs 200 --scrapes 50

Each rig has 8 GPUs with a fresh reading, one healthy deployment serving live, a proxy-router and a few operations;
rows are created directly in a throwaway SQLite database (or --database-url, an empty database).
"""

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _django  # noqa: E402
import dashboard  # noqa: E402  (its rigs and its page, so both are measured on the same rows)

# This script shares its name with the `metrics` app: the project root goes first, or the settings would import it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TOKEN = "bench-metrics-token-" + "b" * 24


def add_the_rest(first, count, now):
    """A deployment serving live, a proxy-router and three operations on each rig added by dashboard.add_rigs."""
    from hosting.models import Build, Deployment
    from marketplace.models import Router
    from models_catalog.models import RigFile
    from nodes.models import Node, Operation

    rigs = list(Node.objects.filter(name__in=[f"rig-{i:04d}" for i in range(first, first + count)]))
    builds = Build.objects.bulk_create(Build(node=rig, status=Build.READY, binary_path="/opt/llama-server")
                                       for rig in rigs)
    files = RigFile.objects.bulk_create(RigFile(node=rig, path="/models/qwen3-8b-Q4_K_M.gguf", size=5 * _django.GiB)
                                        for rig in rigs)
    serving = {"generated_tps": 41.5, "prompt_tps": 900.0, "tokens_generated": 123456, "prompt_tokens": 654321,
               "requests_processing": 2, "requests_deferred": 0, "busy_per_decode": 2.0, "slots_busy": 2,
               "slots_total": 4, "kv_used": 3000, "kv_total": 32768}
    Deployment.objects.bulk_create(
        Deployment(node=rig, name="qwen3-8b", model_file=rig_file, build=build, port=8080, actual_state="healthy",
                   serving=serving, serving_at=now)
        for rig, build, rig_file in zip(rigs, builds, files))
    Router.objects.bulk_create(Router(node=rig, binary_path="/opt/proxy-router", state="healthy",
                                      snapshot={"open_sessions": rig.pk % 4}) for rig in rigs)
    Operation.objects.bulk_create(
        Operation(node=rig, kind=kind, status=status) for rig in rigs
        for kind, status in [(Operation.PING, Operation.SUCCEEDED), (Operation.LAUNCH, Operation.SUCCEEDED),
                             (Operation.BENCHMARK, Operation.FAILED)])


def scrape(client):
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", HTTP_ACCEPT_ENCODING="gzip")
    assert response.status_code == 200, response.status_code
    return response


def timed(call, times):
    wall, cpu = [], []
    for _ in range(times):
        start, cpu_start = time.perf_counter(), time.process_time()
        call()
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - cpu_start) * 1000)
    wall.sort()
    return {"median": statistics.median(wall), "p95": wall[min(len(wall) - 1, round(0.95 * (len(wall) - 1)))],
            "cpu": statistics.median(cpu)}


def measure(client, page_client, rigs, times):
    from django.db import connection, reset_queries
    from django.test.utils import CaptureQueriesContext
    from prometheus_client.parser import text_string_to_metric_families

    reset_queries()  # each request empties the query log as it starts: count from an empty one
    with CaptureQueriesContext(connection) as captured:
        body = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content
    queries = len(captured)
    families = list(text_string_to_metric_families(body.decode()))
    series = sum(len(family.samples) for family in families)
    temps = sum(1 for f in families if f.name == "DCGM_FI_DEV_GPU_TEMP" for _ in f.samples)
    assert temps == rigs * dashboard.GPUS_PER_RIG, f"{temps} GPU temperatures, not {rigs * dashboard.GPUS_PER_RIG}"
    gzipped = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", HTTP_ACCEPT_ENCODING="gzip")
    assert gzipped["Content-Encoding"] == "gzip"
    row = {"queries": queries, "bytes": len(body), "gzip_bytes": len(gzipped.content), "series": series,
           "families": len(families),
           **timed(lambda: scrape(client), times)}
    reset_queries()
    with CaptureQueriesContext(connection) as captured:
        dashboard.render(page_client, dashboard.PAGES["full page"])
    page_queries = len(captured)  # read now: captured_queries reads the log, which the next request empties
    page = timed(lambda: dashboard.render(page_client, dashboard.PAGES["full page"]), times)
    row["page_queries"], row["page_median"], row["page_cpu"] = page_queries, page["median"], page["cpu"]
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rigs", default="10,50,200", help="rig counts to measure, ascending")
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--database-url", help="an empty database to use instead of a temp SQLite file")
    args = parser.parse_args(argv)
    sizes = sorted(int(n) for n in args.rigs.split(","))

    os.environ["MORPHEUS_METRICS_TOKEN"] = TOKEN
    workdir = _django.setup(args.database_url)
    try:
        from django.db import connection
        from django.test import Client
        from django.utils import timezone

        print(f"database: {connection.vendor}; {dashboard.GPUS_PER_RIG} GPUs, 1 live deployment, 1 proxy-router per "
              f"rig; {args.scrapes} scrapes per figure; DEBUG off; time = Django test Client round trip of a gzip "
              f"scrape (as Prometheus asks for one), CPU = this process's CPU time (median); load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        client, page_client = Client(), dashboard.operator_client()  # Prometheus has the token, no session
        results, made = {}, 0
        for size in sizes:
            now = timezone.now()
            dashboard.add_rigs(made, size - made, now)
            add_the_rest(made, size - made, now)
            made = size
            results[size] = measure(client, page_client, size, args.scrapes)

        print(f"\n{'rigs':>5} {'GPUs':>5} {'queries':>7} {'series':>7} {'KB':>7} {'gzip KB':>7} {'median ms':>10}"
              f" {'p95 ms':>8} {'CPU ms':>7} | {'page queries':>12} {'page ms':>8} {'page CPU':>8} {'scrape/page':>11}")
        for size, row in results.items():
            print(f"{size:>5} {size * dashboard.GPUS_PER_RIG:>5} {row['queries']:>7} {row['series']:>7}"
                  f" {row['bytes'] / 1024:>7.0f} {row['gzip_bytes'] / 1024:>7.0f} {row['median']:>10.1f}"
                  f" {row['p95']:>8.1f} {row['cpu']:>7.1f} | {row['page_queries']:>12} {row['page_median']:>8.1f}"
                  f" {row['page_cpu']:>8.1f} {row['cpu'] / row['page_cpu']:>10.1f}×")
        small, large = results[sizes[0]], results[sizes[-1]]
        print(f"scrape: queries {small['queries']} → {large['queries']} for {sizes[-1] / sizes[0]:.0f}× rigs; "
              f"{large['series'] / (sizes[-1] * dashboard.GPUS_PER_RIG):.1f} series per GPU at {sizes[-1]} rigs; "
              f"{large['cpu'] / sizes[-1]:.2f} ms CPU per rig; scrape/page compares CPU time (steadier than wall)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
