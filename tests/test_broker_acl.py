"""A broker account per rig: what a rig's Redis login can and cannot do, against a real Redis and a real Celery
worker configured like the agent (nodes/agent/transport.py). Each test starts its own Redis with an admin password
(it does not use the session fixtures of tests/conftest.py)."""

import base64
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from celery import Celery

from morpheus_admin import localredis
from nodes import broker
from nodes.agent import transport
from nodes.agent.envelope import derive_keys

ROOT = Path(__file__).resolve().parent.parent
ADMIN_PASSWORD = "admin-Pw:with/odd@chars"
TOKEN_A = "alpha-token-" + "a" * 32
TOKEN_A2 = "alpha-token-2-" + "c" * 32
TOKEN_B = "beta-token-" + "b" * 32
SEP = "\x06\x16"


def wait_until(check, timeout=15.0, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {message}")


# --- unit: no Redis ---------------------------------------------------------------------------------
def test_version_parsing_and_the_reason_given():
    assert broker.parse_version("6.2.14") == (6, 2, 14)
    assert broker.parse_version("7.0.15") == (7, 0, 15)
    assert broker.parse_version("") == (0,)
    label, version = broker.describe_server({"redis_version": "5.0.7"})
    reason = broker.version_problem(label, version, "10.0.0.5:6379")
    assert reason.startswith("Redis 5.0.7 at 10.0.0.5:6379 is too old: it has no ACL users")
    assert "Redis 7" in reason
    # Redis 6.x holds rig accounts, for this machine's rig only (tests/test_broker_redis6.py)
    assert broker.version_problem(*broker.describe_server({"redis_version": "6.2.14"}), "h:1") is None
    assert broker.version_problem(*broker.describe_server({"redis_version": "7.0.15"}), "h:1") is None
    label, version = broker.describe_server({"redis_version": "7.2.4", "valkey_version": "9.1.2"})
    assert label == "Valkey 9.1.2" and broker.version_problem(label, version, "h:1") is None


def test_rig_rules_name_only_its_own_keys():
    rules = broker.rig_acl_rules("alpha", "ab" * 32)
    assert rules[:3] == ["reset", "on", "#" + "ab" * 32]
    assert {"resetkeys", "resetchannels", "-@all"} <= set(rules)
    keys = [r for r in rules if "~" in r]
    assert keys == ["~node.alpha", f"~node.alpha{SEP}*", "~unacked.node.alpha", "~unacked_index.node.alpha",
                    "~unacked_mutex.node.alpha", f"(%W~panel %W~panel{SEP}* +lpush)",
                    "(%R~_kombu.binding.panel %R~_kombu.binding.node.alpha +smembers)"]
    assert "~node.alpha*" not in rules  # would also match node.alpha-2
    assert not any(r.startswith("&") or r in ("allchannels", "allkeys", "+@all", "allcommands") for r in rules)
    assert not any(r.startswith("+select") for r in rules)
    assert "+select|2" in broker.rig_acl_rules("alpha", db=2)
    assert not any(r.startswith("#") for r in broker.rig_acl_rules("alpha"))
    with pytest.raises(ValueError):
        broker.rig_acl_rules("Alpha*")


def test_agent_transport_settings():
    config = transport.agent_celery_config("redis://panel.example:6379/0", "alpha", TOKEN_A)
    password = derive_keys(TOKEN_A).broker_password
    assert config["broker_url"] == f"redis://rig-alpha:{password}@panel.example:6379/0"
    assert config["broker_transport_options"] == {
        "visibility_timeout": 3600, "unacked_key": "unacked.node.alpha",
        "unacked_index_key": "unacked_index.node.alpha", "unacked_mutex_key": "unacked_mutex.node.alpha"}
    assert config["worker_enable_remote_control"] is False
    assert config["worker_send_task_events"] is False and config["task_send_sent_event"] is False
    assert "broker_use_ssl" not in config
    assert "--without-heartbeat" in transport.WORKER_ARGS
    queue = transport.report_queue()
    assert (queue.name, queue.exchange.name, queue.exchange.type, queue.routing_key, queue.no_declare) == (
        "panel", "panel", "direct", "panel", True)
    own = config["task_queues"][0]
    assert (own.name, own.exchange.name, own.no_declare) == ("node.alpha", "node.alpha", True)
    with pytest.raises(transport.BrokerURLError, match="must not hold a user name or password"):
        transport.agent_celery_config("redis://:admin@panel.example:6379/0", "alpha", TOKEN_A)
    assert transport.without_credentials("redis://:pw@h:1/0") == "redis://h:1/0"


def test_agent_transport_tls_options():
    import ssl

    config = transport.agent_celery_config("rediss://panel.example:6380/0", "alpha", TOKEN_A,
                                           environ={"MORPHEUS_BROKER_CA_FILE": "/etc/ca.pem"})
    assert config["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/etc/ca.pem"}
    config = transport.agent_celery_config(
        "rediss://panel.example:6380/0?ssl_cert_reqs=none&ssl_ca_certs=/x.pem", "alpha", TOKEN_A, environ={})
    assert config["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_NONE, "ssl_ca_certs": "/x.pem"}
    assert config["broker_url"].endswith("@panel.example:6380/0")
    with pytest.raises(transport.BrokerURLError):
        transport.agent_celery_config("redis://h:1/0?ssl_cert_reqs=none", "alpha", TOKEN_A)


def test_memory_broker_is_a_no_op(settings):
    settings.CELERY_BROKER_URL = "memory://"
    assert broker.check_broker() == broker.NOT_MANAGED
    assert broker.ensure_account("alpha", TOKEN_A)["managed"] is False
    assert broker.rotate_account("alpha", TOKEN_A2)["managed"] is False
    assert broker.delete_account("alpha")["managed"] is False
    assert broker.declare_panel_queue()["managed"] is False
    assert broker.sync_accounts([("alpha", TOKEN_A)])["managed"] is False
    state = broker.account_state("alpha")
    assert state["managed"] is False and state["error"] is None and state["connections"] == 0


def test_persistent_settings_are_kept_private_and_reused(tmp_path):
    first = localredis.persistent_settings(tmp_path / "redis")
    assert stat.S_IMODE(os.stat(first["path"]).st_mode) == 0o600
    assert 0 < first["port"] < 65536 and len(first["password"]) >= 32
    again = localredis.persistent_settings(tmp_path / "redis")
    assert (again["port"], again["password"]) == (first["port"], first["password"])


def test_a_taken_saved_port_is_named_with_its_file(tmp_path):
    saved = localredis.persistent_settings(tmp_path / "redis")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", saved["port"]))
        squatter.listen()
        with pytest.raises(localredis.RedisUnavailable) as caught:
            localredis.start_persistent(tmp_path / "redis")
    assert str(saved["port"]) in str(caught.value) and str(saved["path"]) in str(caught.value)


# --- against a real Redis ---------------------------------------------------------------------------
@pytest.fixture
def admin_url(tmp_path):
    proc, url = localredis.start(tmp_path / "redis", password=ADMIN_PASSWORD, log_path=tmp_path / "redis.log")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def admin(admin_url):
    client = redis.Redis.from_url(admin_url)
    yield client
    client.close()


def port_of(url):
    return int(url.rsplit(":", 1)[1].split("/")[0])


def rig_client(admin_url, name, token):
    # retry=None: redis-py 8 otherwise retries a refused login for ~4 s, and a cut connection with the old password
    return redis.Redis(host="127.0.0.1", port=port_of(admin_url), username=f"rig-{name}",
                       password=derive_keys(token).broker_password, socket_timeout=5, retry=None)


def rig_log_entries(admin, name):
    return [e for e in admin.acl_log(count=128) if e.get("username") == f"rig-{name}"]


@pytest.fixture
def accounts(admin_url, admin):
    broker.ensure_account("alpha", TOKEN_A, admin_url)
    broker.ensure_account("beta", TOKEN_B, admin_url)
    broker.declare_panel_queue(admin_url)
    admin.acl_log_reset()
    return admin_url


@pytest.mark.integration
def test_the_embedded_redis_needs_the_admin_password(admin_url):
    assert f":{ADMIN_PASSWORD}@" not in admin_url  # URL-quoted
    assert redis.Redis.from_url(admin_url).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=port_of(admin_url), retry=None).ping()
    description = broker.check_broker(admin_url)
    assert "at 127.0.0.1:" in description and "'default'" in description


@pytest.mark.integration
@pytest.mark.parametrize("attempt", [
    ("LRANGE", "panel", "0", "-1"), ("RPOP", "panel"), ("BRPOP", "panel", "0.1"), ("LLEN", "panel"),
    ("LPUSH", "node.beta", "forged"), ("BRPOP", "node.beta", "0.1"), ("HGETALL", "unacked.node.beta"),
    ("HGETALL", "unacked"), ("SADD", "_kombu.binding.panel", f"panel{SEP}{SEP}node.alpha"),
    ("SADD", "_kombu.binding.node.alpha", f"node.alpha{SEP}{SEP}panel"), ("LPUSH", "node.alpha-2", "x"),
    ("PUBLISH", "/0.celery.pidbox", "x"), ("PUBLISH", "any", "x"), ("ACL", "WHOAMI"), ("ACL", "LIST"),
    ("ACL", "SETUSER", "rig-alpha", "+@all", "allkeys"), ("CONFIG", "GET", "requirepass"), ("FLUSHALL",),
    ("KEYS", "*"), ("SCAN", "0"), ("EVAL", "return 1", "0"), ("SELECT", "1"), ("CLIENT", "LIST"),
    ("CLIENT", "KILL", "USER", "rig-beta"), ("SCRIPT", "FLUSH"), ("SCRIPT", "KILL"),
    # a write-only key would still allow these; the selector allows LPUSH alone on `panel`
    ("DEL", "panel"), ("UNLINK", "panel"), ("SET", "panel", "x"), ("RPUSH", "panel", "x"), ("EXPIRE", "panel", "1"),
    ("RENAME", "panel", "node.alpha"), ("COPY", "panel", "node.alpha"),
    ("LMOVE", "panel", "node.alpha", "RIGHT", "LEFT"),
    ("DEL", "_kombu.binding.panel"), ("SET", "_kombu.binding.panel", "x"), ("SMEMBERS", "_kombu.binding.node.beta"),
    ("SET", "unacked_mutex.node.beta", "x"), ("HSET", "unacked.node.beta", "t", "x"), ("EVALSHA", "0" * 40, "0"),
])
def test_a_rig_login_is_refused_everything_else(accounts, admin, attempt):
    admin.lpush("panel", "a report from beta")
    admin.lpush("node.beta", "a command for beta")
    admin.hset("unacked.node.beta", "tag", "beta's message in flight")
    alpha = rig_client(accounts, "alpha", TOKEN_A)
    with pytest.raises(redis.exceptions.NoPermissionError):
        alpha.execute_command(*attempt)
    assert admin.llen("panel") == 1 and admin.llen("node.beta") == 1
    assert rig_log_entries(admin, "alpha")  # and Redis logged it for the provider to see


@pytest.mark.integration
def test_a_rig_login_cannot_subscribe(accounts):
    pubsub = rig_client(accounts, "alpha", TOKEN_A).pubsub()
    with pytest.raises(redis.exceptions.NoPermissionError):
        pubsub.subscribe("/0.celeryev")
        pubsub.get_message(timeout=1)
    pubsub = rig_client(accounts, "alpha", TOKEN_A).pubsub()
    with pytest.raises(redis.exceptions.NoPermissionError):
        pubsub.psubscribe("*")
        pubsub.get_message(timeout=1)


@pytest.mark.integration
def test_a_rig_login_does_what_an_agent_needs(accounts, admin):
    alpha = rig_client(accounts, "alpha", TOKEN_A)
    assert alpha.lpush("panel", "alpha's report") == 1
    admin.lpush("node.alpha", "a command for alpha")
    assert alpha.brpop(["node.alpha"], timeout=1) == (b"node.alpha", b"a command for alpha")
    assert admin.rpop("panel") == b"alpha's report"
    assert rig_log_entries(admin, "alpha") == []


def report_values(admin):
    values = []
    for raw in admin.lrange("panel", 0, -1):
        message = json.loads(raw)
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        values.append((message["headers"]["task"], kwargs["rig"], kwargs["value"]))
    return values


@pytest.fixture
def alpha_worker(accounts, tmp_path):
    """A Celery worker with the agent's transport settings, logged in as rig-alpha, consuming node.alpha."""
    procs = []

    def start():
        env = dict(os.environ, RIG_NODE="alpha", RIG_TOKEN=TOKEN_A, PYTHONPATH=str(ROOT),
                   RIG_BROKER=transport.without_credentials(accounts))
        log = open(tmp_path / f"worker-{len(procs)}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.broker_rig_app", "worker", "-Q", "node.alpha",
             "--hostname", "alpha@%h", "-P", "threads", "-c", "2", *transport.WORKER_ARGS, "-l", "INFO"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def panel_app(admin_url):
    app = Celery("panel-under-test", broker=admin_url, fixups=[])
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)
    return app


@pytest.mark.integration
def test_a_celery_worker_on_the_rig_login_runs_tasks_and_reports(accounts, admin, alpha_worker, tmp_path):
    # A message alpha took long ago and never acked (its agent was killed): the worker restores it at start,
    # which runs kombu's restore path (mutex script, WATCH/MULTI, HGET, RPUSH) under the rig's login.
    panel = panel_app(accounts)
    panel.send_task("probe.echo", args=["restored"], queue="node.alpha")
    message = json.loads(admin.rpop("node.alpha"))
    tag = message["properties"]["delivery_tag"]
    admin.hset("unacked.node.alpha", tag, json.dumps([message, "", "node.alpha"]))
    admin.zadd("unacked_index.node.alpha", {tag: 1})

    worker = alpha_worker()
    panel.send_task("probe.echo", args=["hello"], queue="node.alpha")
    panel.send_task("probe.echo", args=["by name"], kwargs={"how": "name"}, queue="node.alpha")
    panel.send_task("probe.echo", args=["by exchange"], kwargs={"how": "exchange"}, queue="node.alpha")
    reports = wait_until(lambda: len(report_values(admin)) >= 4 and report_values(admin), timeout=20,
                         message=f"four reports on the panel queue (worker log: {tmp_path}/worker-0.log)")
    assert sorted(reports) == [("panel.report", "alpha", v) for v in ("by exchange", "by name", "hello", "restored")]
    assert worker.poll() is None
    assert broker.account_state("alpha", accounts)["connections"] >= 1
    wait_until(lambda: admin.hlen("unacked.node.alpha") == 0, message="acks")
    assert admin.llen("node.alpha") == 0
    assert not admin.exists("unacked")  # the shared default hash is never used
    assert rig_log_entries(admin, "alpha") == [], rig_log_entries(admin, "alpha")


@pytest.mark.integration
def test_rotation_cuts_the_old_password_at_once(accounts, admin):
    alpha = rig_client(accounts, "alpha", TOKEN_A)
    assert alpha.ping()
    assert broker.account_state("alpha", accounts)["connections"] == 1

    result = broker.rotate_account("alpha", TOKEN_A2, accounts)

    assert result["disconnected"] == 1 and result["created"] is False
    assert broker.account_state("alpha", accounts)["connections"] == 0
    with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.AuthenticationError)):
        alpha.ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        rig_client(accounts, "alpha", TOKEN_A).ping()
    assert rig_client(accounts, "alpha", TOKEN_A2).lpush("panel", "x") == 1


@pytest.mark.integration
def test_deleting_a_rig_removes_its_login_and_every_key(accounts, admin):
    alpha = rig_client(accounts, "alpha", TOKEN_A)
    alpha.ping()
    for key in ("node.alpha", f"node.alpha{SEP}3", f"node.alpha{SEP}9"):
        admin.lpush(key, "m")
    admin.hset("unacked.node.alpha", "t", "m")
    admin.zadd("unacked_index.node.alpha", {"t": 1})
    admin.set("unacked_mutex.node.alpha", "x")
    for other in ("node.alpha-2", f"node.alpha-2{SEP}3", "node.alphabet", "node.beta"):
        admin.lpush(other, "keep")

    result = broker.delete_account("alpha", accounts)

    assert result["user_deleted"] is True and result["keys_deleted"] >= 7
    left = sorted(k.decode() for k in admin.keys("*node.alpha*"))
    assert left == sorted(["node.alpha-2", f"node.alpha-2{SEP}3", "node.alphabet"])
    assert admin.acl_getuser("rig-alpha") is None
    with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.AuthenticationError)):
        alpha.ping()
    state = broker.account_state("alpha", accounts)
    assert (state["exists"], state["connections"], state["error"]) == (False, 0, None)
    assert broker.account_state("beta", accounts)["exists"] is True


@pytest.mark.integration
def test_account_state_never_raises(accounts):
    state = broker.account_state("alpha", accounts)
    assert (state["exists"], state["enabled"], state["error"]) == (True, True, None)
    closed = localredis.free_port()
    started = time.monotonic()
    state = broker.account_state("alpha", f"redis://:x@127.0.0.1:{closed}/0")
    assert state["error"] and not state["exists"] and time.monotonic() - started < 3
    assert broker.account_state("not a name!", accounts)["error"]


@pytest.mark.integration
def test_sync_recreates_lost_accounts_and_prunes_strays(tmp_path):
    proc, url = localredis.start(tmp_path / "r", password=ADMIN_PASSWORD)
    port = port_of(url)
    try:
        broker.ensure_account("alpha", TOKEN_A, url)
        broker.ensure_account("ghost", "ghost-token-" + "g" * 20, url)
    finally:
        proc.terminate()
        proc.wait(10)
    # A restart loses the ACL users (and, without persistence, the bindings).
    proc, url = localredis.start(tmp_path / "r", port=port, password=ADMIN_PASSWORD)
    try:
        admin = redis.Redis.from_url(url)
        broker.ensure_account("ghost", "ghost-token-" + "g" * 20, url)
        with pytest.raises(redis.exceptions.AuthenticationError):
            rig_client(url, "alpha", TOKEN_A).ping()
        result = broker.sync_accounts([("alpha", TOKEN_A), ("beta", derive_keys(TOKEN_B)), ("Bad!", TOKEN_B)], url)
        assert result["ensured"] == ["alpha", "beta"] and result["pruned"] == ["ghost"]
        assert list(result["failed"]) == ["Bad!"]
        assert rig_client(url, "alpha", TOKEN_A).lpush("panel", "x") == 1
        assert rig_client(url, "beta", TOKEN_B).ping()
        assert admin.smembers("_kombu.binding.panel") == {f"panel{SEP}{SEP}panel".encode()}
        assert admin.smembers("_kombu.binding.node.alpha") == {f"node.alpha{SEP}{SEP}node.alpha".encode()}
        assert admin.acl_getuser("rig-ghost") is None
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.integration
def test_check_broker_refuses_a_login_that_cannot_manage_acls(admin_url, admin):
    port = port_of(admin_url)
    admin.execute_command("ACL", "SETUSER", "no-acl", "on", ">pw-no-acl", "~*", "&*", "+@all", "-acl")
    admin.execute_command("ACL", "SETUSER", "no-setuser", "on", ">pw-no-setuser", "~*", "&*", "+@all",
                          "-acl|setuser")
    for user in ("no-acl", "no-setuser"):
        with pytest.raises(broker.BrokerUnsupported, match="cannot manage ACL users"):
            broker.check_broker(f"redis://{user}:pw-{user}@127.0.0.1:{port}/0")


@pytest.mark.integration
def test_check_broker_refuses_redis_5(admin_url, monkeypatch):
    real_info = redis.Redis.info

    def info(self, section=None, *args, **kwargs):
        found = real_info(self, section, *args, **kwargs)
        if section != "server":
            return found
        return {k: v for k, v in found.items() if k != "valkey_version"} | {"redis_version": "5.0.7"}

    monkeypatch.setattr(redis.Redis, "info", info)
    with pytest.raises(broker.BrokerUnsupported, match=r"Redis 5\.0\.7 at 127\.0\.0\.1:\d+ is too old: it has no ACL"):
        broker.check_broker(admin_url)
    assert broker.remote_rigs_supported(admin_url) is False


@pytest.mark.integration
def test_the_persistent_redis_comes_back_on_the_same_port_with_the_same_password(tmp_path):
    proc, url = localredis.start_persistent(tmp_path / "redis")
    try:
        redis.Redis.from_url(url).set("survives", "yes")
    finally:
        proc.terminate()
        proc.wait(10)
    proc, again = localredis.start_persistent(tmp_path / "redis")
    try:
        assert again == url
        assert redis.Redis.from_url(again).get("survives") == b"yes"
        assert "requirepass" not in " ".join(proc.args)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.integration
def test_check_broker_refuses_a_redis_whose_acl_command_is_gone(tmp_path):
    # What a managed Redis that disabled or renamed ACL looks like to the panel.
    port = localredis.free_port()
    proc = subprocess.Popen([localredis.find_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path), "--rename-command", "ACL", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        localredis.wait_for_port("127.0.0.1", port, proc=proc)
        with pytest.raises(broker.BrokerUnsupported, match=r"at 127\.0\.0\.1:\d+ has no ACL commands"):
            broker.check_broker(f"redis://127.0.0.1:{port}/0")
    finally:
        proc.terminate()
        proc.wait(10)
