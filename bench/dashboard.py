"""Dashboard benchmark: SQL queries and server time per render with simulated rigs × 8 GPUs.

    .venv/bin/python bench/dashboard.py                     # 10, 50, 200 rigs; 20 renders each
    .venv/bin/python bench/dashboard.py --profile           # also where the time goes at the largest size

Rows are created directly in a throwaway SQLite database (or --database-url, which must be an empty database).
"""

import argparse
import cProfile
import io
import os
import pstats
import shutil
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _django  # noqa: E402

GPUS_PER_RIG = 8


def add_rigs(first, count, now):
    from nodes.models import GPU, HardwareProfile, Node

    template = HardwareProfile.objects.filter(is_template=True).first()
    hardware = _django.hardware_payload(GPUS_PER_RIG)
    rigs = []
    for i in range(first, first + count):
        # Mostly online, some stale or offline, as on a real fleet; statuses hold for the whole run (a minute's
        # interval), so a refresh sees only the changes the benchmark makes.
        age = 900 if i % 23 == 0 else 150 if i % 11 == 0 else i % 5
        rigs.append(Node(
            name=f"rig-{i:04d}", token=f"token-{i:04d}-" + "x" * 32, last_seen=now - timedelta(seconds=age),
            last_status=Node.ONLINE, telemetry_interval=60.0, hardware=hardware, hardware_at=now,
            host_reading={"cpu_percent": float(i % 100), "ram_used": 20 * _django.GiB, "disk_free": 10**11,
                          "at": now.isoformat()},
            profile=template if i % 2 else None,
        ))
    Node.objects.bulk_create(rigs)
    rigs = list(Node.objects.filter(name__in=[r.name for r in rigs]))
    gpus = []
    for rig in rigs:
        reading = _django.telemetry_payload(now.timestamp(), rig.pk, GPUS_PER_RIG)["gpus"]
        for spec, data in zip(hardware["gpus"], reading):
            gpus.append(GPU(
                node=rig, index=spec["index"], uuid=f"{spec['uuid']}-{rig.pk}", name=spec["name"],
                vram_total=spec["vram_total"], power_limit_w=spec["power_limit_w"], pcie_gen=4, pcie_width=16,
                compute_capability="8.6", reading_at=now, util=data["util"], vram_used=data["vram_used"],
                temp_c=data["temp_c"], power_w=data["power_w"], fan=data["fan"], sm_clock=data["sm_clock"],
            ))
    GPU.objects.bulk_create(gpus, batch_size=500)


def operator_client():
    from django.conf import settings
    from django.contrib.auth.models import Group, User
    from django.test import Client

    from nodes.permissions import OPERATORS_GROUP

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    user, _ = User.objects.get_or_create(username="bench-operator")
    user.groups.add(Group.objects.get(name=OPERATORS_GROUP))
    client = Client()
    client.force_login(user)
    return client


PAGES = {"full page": {}, "htmx partial": {"HX-Request": "true"}}
CHANGED = 5  # rigs whose readings change between two refreshes in the "refresh" rows


def render(client, headers, status=200):
    response = client.get("/", headers=headers)
    assert response.status_code == status, response.status_code
    return response


def shown_header(body):
    """The X-Rig-Cards header the dashboard's script sends for a page holding `body`."""
    import re

    text = body.decode()
    names = re.search(r'id="rig-names" data-hash="([0-9a-f]+)"', text).group(1)
    return names + ":" + "".join(re.findall(r'data-fp="([0-9a-f]+)"', text))


def change_some_rigs(count):
    """New readings on `count` rigs (first GPU's utilisation), as their next telemetry would bring."""
    from nodes.models import GPU

    for gpu in GPU.objects.filter(index=0).order_by("node__name")[:count]:
        GPU.objects.filter(pk=gpu.pk).update(util=((gpu.util or 0) + 37) % 101)


def measure(client, rigs, renders):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    rows = {}
    for page, headers in {**PAGES, f"refresh, {CHANGED} changed": None}.items():
        if headers is None:
            # What a refresh of an open tab costs: the cards as the browser shows them (the header
            # static/js/dashboard.js sends with each poll), then 5 rigs' new readings.
            headers = {"HX-Request": "true", "X-Rig-Cards": shown_header(render(client, PAGES["full page"]).content)}
            change_some_rigs(CHANGED)
        with CaptureQueriesContext(connection) as captured:
            response = render(client, headers)
        # Read now: the next request's request_started signal empties the connection's query log.
        sql = [q["sql"] for q in captured.captured_queries]
        body = response.content
        expected = min(CHANGED, rigs) if page.startswith("refresh") else rigs
        rendered = body.count(b'data-gpu="')
        assert rendered == expected * GPUS_PER_RIG, f"{page}: {rendered} GPUs rendered, not {expected * GPUS_PER_RIG}"
        times, cpu = [], []
        for _ in range(renders):
            start, cpu_start = time.perf_counter(), time.process_time()
            render(client, headers)
            times.append((time.perf_counter() - start) * 1000)
            cpu.append((time.process_time() - cpu_start) * 1000)
        times.sort()
        rows[page] = {
            "queries": len(sql),
            "min": times[0],
            "median": statistics.median(times),
            "p95": times[min(len(times) - 1, round(0.95 * (len(times) - 1)))],
            "cpu": statistics.median(cpu),
            "kb": len(body) / 1024,
            "sql": sql,
        }
    # Nothing changed since the last refresh: the answer is 204, no body.
    unchanged = {"HX-Request": "true", "X-Rig-Cards": shown_header(render(client, PAGES["full page"]).content)}
    times = []
    for _ in range(renders):
        start = time.perf_counter()
        render(client, unchanged, status=204)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    rows["refresh, none changed"] = {"queries": rows[f"refresh, {CHANGED} changed"]["queries"], "min": times[0],
                                     "median": statistics.median(times),
                                     "p95": times[min(len(times) - 1, round(0.95 * (len(times) - 1)))],
                                     "cpu": float("nan"), "kb": 0.0, "sql": []}
    return rows


def profile(client, headers, top=25):
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(5):
        render(client, headers)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
    print(out.getvalue())
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    print(out.getvalue())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rigs", default="10,50,200", help="rig counts to measure, ascending")
    parser.add_argument("--renders", type=int, default=20)
    parser.add_argument("--database-url", help="an empty database to use instead of a temp SQLite file")
    parser.add_argument("--profile", action="store_true", help="cProfile 5 partial renders at the largest size")
    parser.add_argument("--show-sql", action="store_true")
    args = parser.parse_args(argv)
    sizes = sorted(int(n) for n in args.rigs.split(","))

    workdir = _django.setup(args.database_url)
    try:
        from django.db import connection
        from django.utils import timezone

        print(f"database: {connection.vendor}; {GPUS_PER_RIG} GPUs per rig; {args.renders} renders per figure; "
              f"DEBUG off; server time = Django test Client round trip (middleware + view + template), "
              f"CPU = this process's CPU time per render (median; steadier than wall time on a busy machine); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        client = operator_client()
        results, made = {}, 0
        for size in sizes:
            add_rigs(made, size - made, timezone.now())
            made = size
            results[size] = measure(client, size, args.renders)

        print(f"\n{'rigs':>5} {'GPUs':>5}  {'page':<22} {'queries':>7} {'min ms':>7} {'median ms':>10} {'p95 ms':>8} {'CPU ms':>7} {'KB':>7}")
        for size in sizes:
            for page, row in results[size].items():
                print(f"{size:>5} {size * GPUS_PER_RIG:>5}  {page:<22} {row['queries']:>7} {row['min']:>7.1f} {row['median']:>10.1f}"
                      f" {row['p95']:>8.1f} {row['cpu']:>7.1f} {row['kb']:>7.0f}")
        small, large = sizes[0], sizes[-1]
        for page in PAGES:
            q_small, q_large = results[small][page]["queries"], results[large][page]["queries"]
            t_small, t_large = results[small][page]["median"], results[large][page]["median"]
            print(f"{page}: queries {q_small} → {q_large} ({q_large / q_small:.2f}× for {large / small:.0f}× rigs);"
                  f" median {t_small:.1f} → {t_large:.1f} ms ({t_large / large:.2f} ms per rig at {large})")
        before, after = results[large]["htmx partial"], results[large][f"refresh, {CHANGED} changed"]
        print(f"refresh at {large} rigs, {CHANGED} changed, against every card (what each poll sent before): "
              f"{after['median']:.1f} vs {before['median']:.1f} ms ({before['median'] / after['median']:.1f}× faster), "
              f"{after['kb']:.0f} vs {before['kb']:.0f} KB ({before['kb'] / after['kb']:.0f}× fewer bytes)")
        if args.show_sql:
            for sql in results[large]["htmx partial"]["sql"]:
                print("  ", sql[:160])
        if args.profile:
            profile(client, PAGES["htmx partial"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
