"""Marketplace benchmark: what selling through the Morpheus proxy-router costs the panel and each rig's agent.

    .venv/bin/python bench/marketplace.py                          # all three parts, ~30 s on 2 cores
    .venv/bin/python bench/marketplace.py --rigs 10,50,200,500 --renders 20 --reports 100 --snapshots 50
    .venv/bin/python bench/marketplace.py --only pages --show-sql  # one part; the SQL of the largest size's pages

1. ingest: one `router` report applied in this process as the panel worker applies it: `nodes.ingest.handle_report`
   on a report signed with the rig's key, which checks it with `nodes.reports.clean_router` and hands it to the
   writer marketplace registered (`nodes.ingest.APPLY["router"]`, i.e. `marketplace.ingest.apply_router`). A busy
   rig's report (64 sessions, half open, the claimable balances the agent reads (16) and their total; 64 bids; 16
   registered models with their market prices; 8 models-config entries) against a baseline report of the same
   router with none of those. Steady state: the rig's sessions are already stored (the first report, which creates
   them, is shown apart). Rows: the whole handle_report, clean_router alone, the writer alone.
2. pages: the fleet checklist `/marketplace/`, one rig's `/rigs/<name>/marketplace/` (full page and the HTMX poll of
   its live part) and `/rigs/<name>/marketplace/sessions/` at 10, 50 and 200 rigs, against the dashboard `/` of the
   same fleet (rigs × 8 GPUs, built as bench/dashboard.py builds them). Every rig has 2 published deployments
   (Listings), and its proxy-router's report applied through the writer: healthy, a bid and a models-config entry
   for each published deployment, 64 sessions (half open) stored as RouterSession rows and kept in the report.
   Queries per render, median ms over --renders through Django's test Client, logged in as an operator, DEBUG off.
3. agent: the agent's `router` report read from the proxy-router stand-in (tests/routerstub.py) run as a real
   process (tests/routerkit.StubProcess), seeded with 6 providers, 4 own models, a models-config entry for each, and
   64 sessions (half open) and 5 competing bids beside the provider's own on each model, against a baseline chain
   with no sessions and no bids. It calls nodes/agent/tasks/router.router_state, the function the agent's report is
   built by, with a fixed healthy RouterProcess.report() in place of a supervised process: the proxy port's TCP
   check, the sessions and claimable balances, healthcheck, wallet, balance, providers, models, the provider's bids,
   the market (one call per model) and the open sessions, each through AdminClient as client_for() builds it. Admin
   API calls are counted at AdminClient.call; time is wall time per report (median of --snapshots), the stand-in answering on loopback.
   The report is checked with clean_router, as the panel will.

Rows are created directly in a throwaway SQLite database (or --database-url, which must be an empty database).
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _django  # noqa: E402

sys.path.insert(0, str(_django.ROOT))  # the app `marketplace` comes before this file, whatever PYTHONPATH says

MOR = 10**18
SESSIONS, BIDS, MARKET_MODELS, CONFIG_ENTRIES = 64, 64, 16, 8
WALLET = "0x" + "12" * 20
USER = "0x" + "ee" * 20
LOG = "\n".join(f"2025-01-01T00:00:{n:02d} INFO proxy-router: session served, model {n % 8}" for n in range(40))


def mid(n):
    """A model, bid or session id: 0x and 64 hex digits (as tests/routerkit.mid)."""
    return "0x" + f"{n:064x}"


def median(values):
    return statistics.median(values) if values else float("nan")


# --- the `router` report, as the agent sends it --------------------------------------------------------------------
def sessions_payload(count, models, now, claims):
    """`count` sessions over `models`, the first half open (the agent lists open ones first), opened over the last
    hour; the agent's claimable balances on the first `claims` of them."""
    out = []
    for n in range(count):
        opened = now - 3600 + n * 50
        out.append({"id": mid(100_000 + n), "user": USER, "model_id": mid(models[n % len(models)]),
                    "bid_id": mid(5000 + models[n % len(models)]), "opened_at": opened, "ends_at": opened + 7200,
                    "closed_at": None if n < count // 2 else opened + 300, "price_per_second": "11000000000",
                    "stake": str(MOR), "provider_withdrawn": "0",
                    "claimable_wei": str(10**15 + n) if n < claims else None})
    return out


def config_entry(m):
    return {"modelId": mid(m), "modelName": f"model-{m}", "apiType": "openai",
            "apiUrl": f"http://127.0.0.1:{8080 + m}/v1/chat/completions", "concurrentSlots": 4,
            "capacityPolicy": "simple", "apiKey": "set"}


def router_payload(now, sessions=(), bids=(), models=(), market=(), config_models=()):
    """A healthy router's report (protocol.ROUTER_FIELDS) with these sessions, bid models, registered models, market
    models and models-config entries."""
    sessions = list(sessions)
    claims = [int(s["claimable_wei"]) for s in sessions if s["claimable_wei"] is not None]
    return {"state": "healthy", "pid": 4242, "message": "healthy", "log": LOG, "restarts": 0, "version": "v7.11.0",
            "health": "healthy", "models_health": {e["modelId"]: {"status": "healthy"} for e in config_models},
            "wallet": WALLET, "mor_wei": str(3 * MOR), "eth_wei": str(10**16),
            "provider": {"address": WALLET, "endpoint": "rig.example.com:3333", "stake": str(2 * MOR // 10)},
            "models": [{"id": mid(m), "name": f"model-{m}", "stake": str(MOR // 10)} for m in models],
            "bids": [{"id": mid(5000 + m), "model_id": mid(m), "price_per_second": "11000000000"} for m in bids],
            "market": {mid(m): {"count": 5, "lowest": "10000000000", "median": "12000000000"} for m in market},
            "open_sessions": sum(1 for s in sessions if s["closed_at"] is None),
            "sessions": sessions, "claimable_wei": str(sum(claims)) if claims else None,
            "started_at": now - 86400.0, "proxy_listening": True, "reload_supported": None,
            "config_models": list(config_models), "unmanaged_keys": ["WALLET_PRIVATE_KEY"], "network": "mainnet",
            "binary": "/opt/morpheus/proxy-router", "at": float(now), "error": None}


def busy_payload(now):
    return router_payload(now, sessions_payload(SESSIONS, range(1, CONFIG_ENTRIES + 1), now, claims=16),
                          bids=range(1, BIDS + 1), models=range(1, MARKET_MODELS + 1),
                          market=range(1, MARKET_MODELS + 1),
                          config_models=[config_entry(m) for m in range(1, CONFIG_ENTRIES + 1)])


def signed(node, token, payload, seq):
    """A report as the agent sends it: signed with the rig's key (nodes/agent/envelope.py)."""
    from nodes.agent import envelope

    return envelope.sign_report(envelope.derive_keys(token), rig=node.name, kind="router", payload=payload, seq=seq)


# --- rigs with published deployments ---------------------------------------------------------------------------
def publish_two(nodes, now):
    """2 healthy deployments per rig (one build, two model files), each published as a Listing (models 1 and 2),
    with recent serving metrics so the writer matches sessions to them."""
    from hosting.models import Build, Deployment
    from marketplace.models import Listing
    from models_catalog.models import RigFile

    builds = Build.objects.bulk_create([Build(node=n, source="/src/llama.cpp", ref="b1", status=Build.READY,
                                              is_default=True, binary_path="/opt/llama/llama-server") for n in nodes])
    files = RigFile.objects.bulk_create([RigFile(node=n, path=f"/models/{name}-Q4_K_M.gguf", size=4 * 10**9)
                                         for n in nodes for name in ("tiny", "small")])
    deployments = Deployment.objects.bulk_create([
        Deployment(node=n, name=name, model_file=files[2 * i + k], build=builds[i], port=8080 + k, parallel=4,
                   api_key=f"sk-bench-{n.name}-{name}", actual_state="healthy", started_at=now - timedelta(hours=2),
                   serving={"tokens_generated": 1000}, serving_at=now)
        for i, n in enumerate(nodes) for k, name in enumerate(("tiny", "small"))])
    Listing.objects.bulk_create([Listing(deployment=d, model_id=mid(1 + k % 2), model_name=f"{d.name}-llama")
                                 for k, d in enumerate(deployments)])


# --- 1. ingest -------------------------------------------------------------------------------------------------------
def timed_reports(call, count):
    """(median ms, median CPU ms) of `count` calls of call(n)."""
    times, cpu = [], []
    for n in range(count):
        start, cpu_start = time.perf_counter(), time.process_time()
        call(n)
        times.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - cpu_start) * 1000)
    return median(times), median(cpu)


def queries_of(call):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        call()
    return [q["sql"] for q in captured.captured_queries]


def measure_ingest(node, token, payload, reports):
    """Rows for one rig's report: the first (creates its Router row and sessions), then steady state."""
    from django.utils import timezone

    from nodes import ingest
    from nodes.reports import CLEANERS

    seq = iter(range(1, 10**9))
    first = signed(node, token, payload, next(seq))
    start = time.perf_counter()
    first_sql = queries_of(lambda: ingest.handle_report(**first))
    first_ms = (time.perf_counter() - start) * 1000
    rows = {"first report (creates rows)": {"queries": len(first_sql), "median": first_ms, "cpu": float("nan")}}

    pre = [signed(node, token, payload, next(seq)) for _ in range(reports + 1)]
    sql = queries_of(lambda: ingest.handle_report(**pre[0]))
    ms, cpu = timed_reports(lambda n: ingest.handle_report(**pre[n + 1]), reports)
    rows["handle_report (whole)"] = {"queries": len(sql), "median": ms, "cpu": cpu, "sql": sql}

    ms, cpu = timed_reports(lambda _n: CLEANERS["router"](payload), reports)
    rows["clean_router"] = {"queries": 0, "median": ms, "cpu": cpu}

    clean = CLEANERS["router"](payload)
    writer = ingest.APPLY["router"]
    sql = queries_of(lambda: writer(node, clean, timezone.now(), next(seq)))
    ms, cpu = timed_reports(lambda _n: writer(node, clean, timezone.now(), next(seq)), reports)
    rows["writer (apply_router)"] = {"queries": len(sql), "median": ms, "cpu": cpu, "sql": sql}
    return rows


def part_ingest(args):
    from django.utils import timezone

    from marketplace.models import RouterSession
    from nodes.models import Node

    now = timezone.now()
    rigs = {}
    for name in ("ingest-busy", "ingest-baseline"):
        node = Node(name=name, last_seen=now, telemetry_interval=5.0)
        rigs[name] = (node, node.set_new_token())
        node.save()
    publish_two([node for node, _ in rigs.values()], now)
    at = int(time.time())
    busy, baseline = busy_payload(at), router_payload(at)
    sizes = {label: len(json.dumps(p)) / 1024 for label, p in (("busy", busy), ("baseline", baseline))}
    results = {"busy": measure_ingest(*rigs["ingest-busy"], busy, args.reports),
               "baseline": measure_ingest(*rigs["ingest-baseline"], baseline, args.reports)}
    stored = RouterSession.objects.filter(node=rigs["ingest-busy"][0])
    assert stored.count() == SESSIONS and stored.filter(closed_at__isnull=True).count() == SESSIONS // 2
    assert stored.filter(deployment__isnull=False).count() == SESSIONS // CONFIG_ENTRIES * 2  # models 1 and 2

    print(f"\n1. Panel ingest of one `router` report ({args.reports} reports per figure, median; in this process).")
    print(f"   busy: {SESSIONS} sessions ({SESSIONS // 2} open, 16 claimable read), {BIDS} bids, {MARKET_MODELS} "
          f"registered models with market prices, {CONFIG_ENTRIES} config entries: {sizes['busy']:.1f} KB of JSON")
    print(f"   baseline: the same healthy router with none of those: {sizes['baseline']:.1f} KB")
    print(f"\n   {'step':<28} {'queries':>14} {'ms busy':>8} {'ms base':>8} {'ratio':>6} {'CPU ms busy':>12}")
    for step in results["busy"]:
        b, a = results["busy"][step], results["baseline"][step]
        ratio = b["median"] / a["median"] if a["median"] else float("nan")
        cpu = "–" if b["cpu"] != b["cpu"] else f"{b['cpu']:.2f}"  # NaN: one sample, timed with its queries
        print(f"   {step:<28} {b['queries']:>6} vs {a['queries']:>5} {b['median']:>8.2f} {a['median']:>8.2f}"
              f" {ratio:>5.1f}× {cpu:>12}")
    whole = results["busy"]["handle_report (whole)"]["median"]
    print(f"   one worker applies ~{1000 / whole:.0f} busy router reports/s "
          f"(~{1000 / results['baseline']['handle_report (whole)']['median']:.0f} baseline)")
    if args.show_sql:
        for sql in results["busy"]["handle_report (whole)"]["sql"]:
            print("     ", sql[:160])


# --- 2. pages ------------------------------------------------------------------------------------------------------
def add_marketplace(names, seq_start=1):
    """2 published deployments per rig, then its router's report applied through the writer: healthy, a bid and
    the models-config entry in force for each published deployment, 64 sessions."""
    from django.utils import timezone

    from marketplace import publishing
    from marketplace.ingest import apply_router
    from nodes.agent.routermodels import reported_models
    from nodes.models import Node
    from nodes.reports import clean_router

    now = timezone.now()
    nodes = list(Node.objects.filter(name__in=names).order_by("name"))
    publish_two(nodes, now)
    at = int(time.time())
    for node in nodes:
        entries = reported_models(publishing.config_entries(node))
        payload = router_payload(at, sessions_payload(SESSIONS, (1, 2), at, claims=16), bids=(1, 2), models=(1, 2),
                                 market=(1, 2), config_models=entries)
        apply_router(node, clean_router(payload), now, seq_start)
    return len(json.dumps(payload)) / 1024


PAGES = {
    "fleet checklist": ("/marketplace/", {}),
    "rig marketplace": ("/rigs/{rig}/marketplace/", {}),
    "rig marketplace poll": ("/rigs/{rig}/marketplace/", {"HX-Request": "true"}),
    "rig sessions": ("/rigs/{rig}/marketplace/sessions/", {}),
    "dashboard /": ("/", {}),
}


def check_page(page, text, rigs, rig):
    if page == "fleet checklist":
        assert text.count('<tr id="fleet-rig-') == rigs, "the fleet page lists every rig"
        ready = text.split(f'id="fleet-{rig}"')[1].split("</tr>")[0]
        assert "is on sale" in ready, ready[:2000]
    elif page == "rig sessions":
        assert text.count('id="session-0x') == SESSIONS, "every session on the page"
    elif page.startswith("rig marketplace"):
        assert "is on sale" in text, text[:2000]


def measure_pages(client, rigs, rig, renders):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    rows = {}
    for page, (url, headers) in PAGES.items():
        url = url.format(rig=rig)
        with CaptureQueriesContext(connection) as captured:
            response = client.get(url, headers=headers)
        sql = [q["sql"] for q in captured.captured_queries]
        assert response.status_code == 200, (url, response.status_code)
        check_page(page, response.content.decode(), rigs, rig)
        times, cpu = [], []
        for _ in range(renders):
            start, cpu_start = time.perf_counter(), time.process_time()
            client.get(url, headers=headers)
            times.append((time.perf_counter() - start) * 1000)
            cpu.append((time.process_time() - cpu_start) * 1000)
        rows[page] = {"queries": len(sql), "median": median(times), "cpu": median(cpu),
                      "kb": len(response.content) / 1024, "sql": sql}
    return rows


def load_routers(count):
    """Median ms to load every Router row, snapshots decoded: the fleet checklist's share of reading the reports."""
    from marketplace.models import Router

    times = []
    for _ in range(count):
        start = time.perf_counter()
        list(Router.objects.all())
        times.append((time.perf_counter() - start) * 1000)
    return median(times)


def part_pages(args):
    import dashboard
    from django.utils import timezone

    sizes = sorted(int(n) for n in args.rigs.split(","))
    client = dashboard.operator_client()
    rig = "rig-0001"  # online (bench/dashboard.py makes every 23rd and 11th rig stale or offline)
    results, made, snapshot_kb = {}, 0, 0.0
    setup = 0.0
    for size in sizes:
        start = time.perf_counter()
        dashboard.add_rigs(made, size - made, timezone.now())
        snapshot_kb = add_marketplace([f"rig-{i:04d}" for i in range(made, size)])
        setup += time.perf_counter() - start
        made = size
        results[size] = measure_pages(client, size, rig, args.renders)

    print(f"\n2. Pages ({args.renders} renders per figure, median; rows made in {setup:.0f} s). Every rig: "
          f"{dashboard.GPUS_PER_RIG} GPUs, 2 published deployments, a healthy router report of {snapshot_kb:.0f} KB "
          f"kept as its snapshot, {SESSIONS} sessions; the rig pages are {rig}'s.")
    print(f"\n   {'rigs':>5}  {'page':<22} {'queries':>7} {'median ms':>10} {'CPU ms':>7} {'KB':>6}"
          f" {'× dashboard':>12}")
    for size in sizes:
        base = results[size]["dashboard /"]["median"]
        for page, row in results[size].items():
            print(f"   {size:>5}  {page:<22} {row['queries']:>7} {row['median']:>10.1f} {row['cpu']:>7.1f}"
                  f" {row['kb']:>6.0f} {row['median'] / base:>11.2f}×")
    small, large = sizes[0], sizes[-1]
    print(f"   of the fleet checklist at {large} rigs, loading the Router rows (each with its report): "
          f"{load_routers(args.renders):.1f} ms")
    for page in PAGES:
        q_small, q_large = results[small][page]["queries"], results[large][page]["queries"]
        t_small, t_large = results[small][page]["median"], results[large][page]["median"]
        print(f"   {page}: queries {q_small} → {q_large}, median {t_small:.1f} → {t_large:.1f} ms "
              f"({t_large / t_small:.2f}× for {large / small:.0f}× rigs)")
    if args.show_sql:
        for page in PAGES:
            print(f"   -- {page} at {large} rigs")
            for sql in results[large][page]["sql"]:
                print("     ", sql[:160])


# --- 3. agent ------------------------------------------------------------------------------------------------------
OWN_MODELS = (1, 2, 3, 4)
COMPETITORS = 5


def chain_seed(busy):
    """The stand-in's chain: the provider and 5 others registered, 4 models of the provider's; when busy, its bid
    and 5 competing bids on each model and 64 sessions (half open) with their claimable balances."""
    now = int(time.time())
    others = ["0x" + f"{0xc0 + p:040x}" for p in range(COMPETITORS)]
    seed = {
        "balance": {"mor": str(3 * MOR), "eth": str(10**16)},
        "providers": [{"Address": a, "Endpoint": f"p{n}.example.com:3333", "Stake": str(2 * MOR // 10),
                       "CreatedAt": "1", "IsDeleted": False} for n, a in enumerate([WALLET, *others])],
        "models": [{"Id": mid(m), "IpfsCID": "0x" + "0" * 64, "Fee": 0, "Stake": MOR // 10, "Owner": WALLET,
                    "Name": f"model-{m}", "Tags": ["chat"], "CreatedAt": 1, "IsDeleted": False, "ModelType": "LLM"}
                   for m in OWN_MODELS],
    }
    if not busy:
        return seed
    seed["bids"] = [{"Id": mid(5000 + 10 * m + p), "Provider": provider, "ModelAgentId": mid(m),
                     "PricePerSecond": str(10_000_000_000 + p * 1_000_000_000), "Nonce": "1", "CreatedAt": "1",
                     "DeletedAt": "0"} for m in OWN_MODELS for p, provider in enumerate([WALLET, *others])]
    seed["sessions"] = []
    for n in range(SESSIONS):
        m, opened = OWN_MODELS[n % len(OWN_MODELS)], now - 3600 + n * 50
        seed["sessions"].append({
            "Id": mid(100_000 + n), "User": USER, "Provider": WALLET, "ModelAgentId": mid(m),
            "BidID": mid(5000 + 10 * m), "Stake": str(MOR), "PricePerSecond": "10000000000",
            "ProviderWithdrawnAmount": "0", "OpenedAt": str(opened), "EndsAt": str(opened + 7200),
            "ClosedAt": "0" if n < SESSIONS // 2 else str(opened + 300)})
    seed["claimable"] = {mid(100_000 + n): str(10**15 + n) for n in range(SESSIONS)}
    return seed


def agent_report(folder, config_models, holder, started_at):
    """The agent's own report of a healthy router (nodes/agent/tasks/router.router_state, which snapshot() calls)."""
    from nodes.agent.router import HEALTHY
    from nodes.agent.tasks.router import router_state

    base = {"state": HEALTHY, "pid": 4242, "message": "healthy", "log": LOG, "restarts": 0, "version": None,
            "models": {}, "started_at": started_at}
    config = {"models": config_models, "network": "mainnet", "binary": "/opt/morpheus/proxy-router"}
    return router_state(folder, base, config, holder, time.time())


def endpoint_kind(path):
    if path.endswith("/providerClaimableBalance"):
        return "claimable balance"
    if path.startswith("/blockchain/models/") and "/bids" in path:
        return "model bids (market)"
    if path.startswith("/blockchain/sessions/"):
        return "sessions"
    if path == "/wallet":
        return "wallet"
    return "other reads"


def measure_agent(workdir, busy, snapshots):
    from morpheus_admin.localredis import free_port
    from nodes.agent.routeradmin import AdminClient
    from nodes.reports import clean_router
    from tests.routerkit import Backend, StubProcess, entry, write_rig_folder

    backend = Backend()  # the deployments the config entries point at: the stand-in's health probe reaches them
    web, proxy = free_port(), free_port()
    models = [entry(m, backend.url, name=f"model-{m}", concurrentSlots=4, capacityPolicy="simple")
              for m in OWN_MODELS]
    folder = write_rig_folder(workdir / ("agent-busy" if busy else "agent-baseline"), web, proxy, models=models,
                              seed=chain_seed(busy))
    stub = StubProcess(folder, web, proxy)
    calls, original = [], AdminClient.call

    def counted(self, method, path, *args, **kwargs):
        calls.append(path)
        return original(self, method, path, *args, **kwargs)

    AdminClient.call = counted
    try:
        stub.start()
        started_at, holder = time.time(), {}
        report = agent_report(folder, models, holder, started_at)  # warm-up
        times, per_report = [], []
        for _ in range(snapshots):
            calls.clear()
            start = time.perf_counter()
            report = agent_report(folder, models, holder, started_at)
            times.append((time.perf_counter() - start) * 1000)
            per_report.append(Counter(endpoint_kind(p) for p in calls))
    finally:
        AdminClient.call = original
        stub.stop()
        backend.close()
    assert report["error"] is None, report["error"]
    clean = clean_router(report)
    if busy:
        assert len(clean["sessions"]) == SESSIONS and clean["open_sessions"] == SESSIONS // 2
        assert len(clean["bids"]) == len(OWN_MODELS)
        assert all(v["count"] == COMPETITORS for v in clean["market"].values())
    else:
        assert not clean["sessions"] and not clean["bids"] and all(v["count"] == 0 for v in clean["market"].values())
    assert len(clean["market"]) == len(OWN_MODELS) and len(clean["config_models"]) == len(OWN_MODELS)
    kinds = Counter()
    for counter in per_report:
        kinds.update(counter)
    return {"median": median(times), "min": min(times), "calls": sum(kinds.values()) / snapshots,
            "kinds": {k: v / snapshots for k, v in kinds.items()}, "kb": len(json.dumps(report)) / 1024}


def part_agent(args, workdir):
    results = {"busy": measure_agent(workdir, True, args.snapshots),
               "baseline": measure_agent(workdir, False, args.snapshots)}
    b, a = results["busy"], results["baseline"]
    print(f"\n3. Agent: one `router` report read from the proxy-router stand-in (a real process on loopback; "
          f"{args.snapshots} reports per figure, median).")
    print(f"   busy chain: {SESSIONS} sessions ({SESSIONS // 2} open), {len(OWN_MODELS)} models with the provider's "
          f"bid and {COMPETITORS} competing bids each, {len(OWN_MODELS)} config entries; baseline: no sessions, "
          "no bids")
    print(f"\n   {'chain':<9} {'API calls':>9} {'median ms':>10} {'min ms':>7} {'report KB':>10}  calls by kind")
    for label, row in results.items():
        kinds = ", ".join(f"{k} {v:g}" for k, v in sorted(row["kinds"].items()))
        print(f"   {label:<9} {row['calls']:>9g} {row['median']:>10.1f} {row['min']:>7.1f} {row['kb']:>10.1f}  {kinds}")
    print(f"   busy vs baseline: {b['calls'] / a['calls']:.2f}× the calls, {b['median'] / a['median']:.2f}× the time, "
          f"{b['kb'] / a['kb']:.1f}× the report")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="ingest,pages,agent", help="parts to run, comma-separated")
    parser.add_argument("--reports", type=int, default=40, help="router reports per ingest figure")
    parser.add_argument("--rigs", default="10,50,200", help="rig counts for the pages, ascending")
    parser.add_argument("--renders", type=int, default=20, help="renders per page figure")
    parser.add_argument("--snapshots", type=int, default=20, help="agent reports per figure")
    parser.add_argument("--database-url", help="an empty database to use instead of a temp SQLite file")
    parser.add_argument("--show-sql", action="store_true")
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))

    workdir = _django.setup(args.database_url)
    try:
        from django.db import connection

        print(f"database: {connection.vendor}; DEBUG off; CPU = this process's CPU time (median); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        if "ingest" in parts:
            part_ingest(args)
        if "pages" in parts:
            part_pages(args)
        if "agent" in parts:
            part_agent(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
