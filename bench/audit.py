"""Audit log benchmark: queries and server time of the /audit/ page and its CSV export as the log grows.

    .venv/bin/python bench/audit.py                          # 10k, 100k, 400k rows (half events, half operations)
    .venv/bin/python bench/audit.py --rows 1000,50000 --database-url postgres://postgres@127.0.0.1/bench_audit

Rows are created directly in a throwaway SQLite database (or --database-url, which must be an empty database).
"""

import argparse
import shutil
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _django  # noqa: E402

BATCH = 5000


def add_rows(first, count, node, user, start):
    """`count` rows, alternating events and operations a second apart going back in time from `start`."""
    from audit.models import AuditEvent
    from nodes.models import Operation

    events, operations = [], []
    for i in range(first, first + count):
        at = start - timedelta(seconds=i)
        if i % 2:
            operations.append(Operation(node=node, kind=Operation.PING, requested_by=user if i % 3 else None,
                                        status=Operation.SUCCEEDED, created=at))
        else:
            events.append(AuditEvent(action="login", user=user, username=user.username, address="192.0.2.7",
                                     outcome=AuditEvent.OK if i % 4 else AuditEvent.FAILED, at=at))
    created = AuditEvent.objects.bulk_create(events, batch_size=BATCH)
    # `at` is auto_now_add: put the times back.
    for chunk in range(0, len(created), BATCH):
        for event, wanted in zip(created[chunk:chunk + BATCH], events[chunk:chunk + BATCH]):
            event.at = wanted.at
    AuditEvent.objects.bulk_update(created, ["at"], batch_size=BATCH)
    Operation.objects.bulk_create(operations, batch_size=BATCH)


def timed(client, url, repeat):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    times, size = [], 0
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            response = client.get(url)
            body = b"".join(response.streaming_content) if response.streaming else response.content
            times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.status_code
        size = len(body)
    return {"queries": len(queries), "median": statistics.median(times), "kb": size / 1024}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="10000,100000,400000", help="log sizes to measure, ascending")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--database-url", help="an empty database to use instead of a temp SQLite file")
    args = parser.parse_args(argv)
    sizes = sorted(int(n) for n in args.rows.split(","))

    workdir = _django.setup(args.database_url)
    try:
        from django.conf import settings
        from django.contrib.auth.models import User
        from django.db import connection
        from django.test import Client
        from django.utils import timezone

        from nodes.models import Node

        settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
        user = User.objects.create_user("bench-viewer")
        node = Node.objects.create(name="rig-0001")
        client = Client()
        client.force_login(user)
        start, made = timezone.now(), 0
        pages = {"page 1": "/audit/", "page 100": "/audit/?page=100",
                 "filtered (failed logins)": "/audit/?action=login&outcome=failed",
                 "CSV, last day": "/audit/?format=csv&since=" + start.date().isoformat()}
        print(f"database: {connection.vendor}; {settings.AUDIT_PAGE_SIZE} rows per page; median of {args.repeat}; "
              "server time = Django test Client round trip")
        print(f"{'rows':>8}  {'request':<26} {'queries':>7} {'median ms':>10} {'KB':>8}")
        for size in sizes:
            add_rows(made, size - made, node, user, start)
            made = size
            for label, url in pages.items():
                row = timed(client, url, 1 if label.startswith("CSV") else args.repeat)
                print(f"{size:>8}  {label:<26} {row['queries']:>7} {row['median']:>10.1f} {row['kb']:>8.0f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
