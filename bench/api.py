"""JSON API benchmark: GET /api/v1/rigs (every rig with its GPUs and latest readings) with simulated rigs × 8 GPUs:
queries, server time and size per call, through a real API token.

    .venv/bin/python bench/api.py                 # 10, 50, 200 rigs; 20 calls each

Rows are created directly in a throwaway SQLite database (or --database-url, which must be an empty database).
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rigs", default="10,50,200", help="rig counts to measure, ascending")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--database-url", help="an empty database to use instead of a temp SQLite file")
    args = parser.parse_args(argv)
    sizes = sorted(int(n) for n in args.rigs.split(","))
    os.environ["MORPHEUS_API_RATE"] = str(10 * args.calls * len(sizes))  # measure the work, not the limit
    workdir = _django.setup(args.database_url)
    try:
        from django.conf import settings
        from django.contrib.auth.models import User
        from django.db import connection
        from django.test import Client
        from django.test.utils import CaptureQueriesContext
        from django.utils import timezone

        import dashboard
        from api.models import ApiToken

        settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
        _token, secret = ApiToken.issue(User.objects.create_user("bench-viewer"), "bench")
        client, auth = Client(), {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
        print(f"database: {connection.vendor}; {dashboard.GPUS_PER_RIG} GPUs per rig; {args.calls} calls per figure; "
              f"DEBUG off; time = Django test Client round trip; load average {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} CPUs")
        print(f"\n{'rigs':>5} {'GPUs':>5} {'queries':>7} {'median ms':>10} {'p95 ms':>8} {'KB':>7}")
        made = 0
        for size in sizes:
            dashboard.add_rigs(made, size - made, timezone.now())
            made = size
            client.get("/api/v1/rigs", **auth)  # the token's last-used time is written on its first call
            with CaptureQueriesContext(connection) as captured:
                response = client.get("/api/v1/rigs", **auth)
                queries = len(captured.captured_queries)  # now: the next request empties the query log
            assert response.status_code == 200 and len(response.json()) == size, response.status_code
            times = []
            for _ in range(args.calls):
                start = time.perf_counter()
                client.get("/api/v1/rigs", **auth)
                times.append((time.perf_counter() - start) * 1000)
            times.sort()
            print(f"{size:>5} {size * dashboard.GPUS_PER_RIG:>5} {queries:>7} {statistics.median(times):>10.1f}"
                  f" {times[round(0.95 * (len(times) - 1))]:>8.1f} {len(response.content) / 1024:>7.0f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
