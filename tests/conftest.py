import os
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User

from morpheus_admin import localredis
from morpheus_admin.celery import app as celery_app
from nodes import reauth
from nodes.permissions import OPERATORS_GROUP, VIEWERS_GROUP
from tests import harness

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # pytest-django's live_server + Playwright
# One secrets key for this run, shared with the panel worker and beat it starts (they inherit the environment).
os.environ.setdefault("MORPHEUS_SECRETS_KEY", "BAZ6JtLbnc2vTPdR_tqVhmqzMcyZhcTs0sJIDdOcUOc=")


def point_celery_at(url):
    """Send this process's tasks to `url` (memory:// for unit tests, the test Redis for integration)."""
    celery_app.close()
    celery_app.conf.broker_url = url
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


@pytest.fixture(autouse=True, scope="session")
def _no_stray_broker():
    # Unit tests must never reach for a Redis on 6379 that a fresh machine does not have.
    point_celery_at("memory://")
    yield


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup):
    """Serialized rollback for browser tests too: inside Playwright's event loop Django hands out new connection
    objects (DB handles are context-local under a running loop), which lack the snapshot taken at setup."""
    from django.db import connections

    for conn in connections.all():
        if hasattr(conn, "_test_serialized_contents"):
            type(conn)._test_serialized_contents = conn._test_serialized_contents
    yield


@pytest.fixture(autouse=True, scope="session")
def _secrets_key():
    from django.conf import settings

    settings.SECRETS_KEY = os.environ["MORPHEUS_SECRETS_KEY"]  # settings may have been read before the line above
    yield


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    # The real hasher costs ~0.2 s per test user; what it protects is Django's business, not ours.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- users: an operator, a viewer, and an outsider with no role ------------------------------------
@pytest.fixture
def operator(db):
    user = User.objects.create_user("olga", password="operator-pass-1")
    user.groups.add(Group.objects.get_or_create(name=OPERATORS_GROUP)[0])  # a transactional test may have flushed the seeded groups
    return user


@pytest.fixture
def viewer(db):
    user = User.objects.create_user("victor", password="viewer-pass-1")
    user.groups.add(Group.objects.get_or_create(name=VIEWERS_GROUP)[0])
    return user


@pytest.fixture
def operator_client(client, operator):
    """An operator who has just typed the password again, so the actions nodes/reauth.py guards run
    (tests/test_reauth.py uses a client without that)."""
    client.force_login(operator)
    session = client.session
    session[reauth.SESSION_KEY] = time.time()
    session.save()
    return client


@pytest.fixture
def viewer_client(client, viewer):
    client.force_login(viewer)
    return client


# --- real processes ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def proc_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("procs")


@pytest.fixture(scope="session")
def redis_url(proc_dir):
    """The panel's (admin) URL of a Redis with ACLs; rigs get their own accounts (`Rigs.start`)."""
    import secrets

    proc, url = localredis.start(proc_dir / "redis", log_path=proc_dir / "redis.log", password=secrets.token_hex(16))
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def hub(proc_dir):
    """The Hugging Face Hub stand-in (tests/hubstub.py), shared by the panel processes and the agents."""
    from tests.hubstub import Hub

    server = Hub().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def worker_env(redis_url, hub, django_db_setup, django_db_blocker):
    from django.db import connection

    db_url = harness.database_url(connection.settings_dict)
    point_celery_at(redis_url)
    yield harness.panel_env(redis_url, db_url, MORPHEUS_STATUS_CHECK_INTERVAL="0.5",
                            MORPHEUS_OPERATION_PICKUP_TIMEOUT="20", MORPHEUS_OPERATION_EXPIRY_CHECK_INTERVAL="1",
                            HF_ENDPOINT=hub.url)
    point_celery_at("memory://")


@pytest.fixture(scope="session")
def panel_processes(worker_env, proc_dir):
    """The panel worker and beat, shared by every integration and browser test."""
    worker = harness.panel_worker(worker_env, proc_dir).start()
    scheduler = harness.beat(worker_env, proc_dir).start()
    worker.wait_for_log("ready.", timeout=60)
    yield {"worker": worker, "beat": scheduler}
    scheduler.stop()
    worker.stop()


class Rigs:
    """Starts rig agents as real `python -m nodes.agent` processes; stops them at teardown."""

    def __init__(self, redis_url, root, panel_worker=None):
        self.redis_url, self.root, self.procs, self.panel_worker = redis_url, Path(root), [], panel_worker

    def start(self, name, token, fake_nvml="nodriver", interval=1.0, wait=True, extra_env=None, account=True):
        """Start rig `name`'s agent with `token`; its broker account is made first, as enrolment makes it (pass
        account=False to start one whose account the test manages itself)."""
        if account:
            from nodes import broker

            broker.ensure_account(name, token)
        proc = harness.agent(name, token, self.redis_url, self.root / name / "data", self.root,
                             fake_nvml=fake_nvml, interval=interval, extra_env=extra_env)
        proc.start()
        self.procs.append(proc)
        if wait:
            proc.wait_for_log("ready.", timeout=60)
        return proc

    def logs(self):
        """The log files of this test's agents and of the shared panel worker."""
        return [proc.log_path for proc in self.procs] + ([self.panel_worker.log_path] if self.panel_worker else [])

    def stop_all(self):
        for proc in self.procs:
            proc.ask_to_stop()
        for proc in self.procs:
            proc.wait_stopped()


@pytest.fixture
def panel(panel_processes, redis_url, worker_env, settings, transactional_db, django_db_serialized_rollback):
    """The shared panel worker for one test; the seeded groups and template are restored for each test."""
    # The web side stamps `expires` on operation messages: make it agree with the panel worker's timeout.
    settings.OPERATION_PICKUP_TIMEOUT = int(worker_env["MORPHEUS_OPERATION_PICKUP_TIMEOUT"])
    settings.CELERY_BROKER_URL = settings.RIG_BROKER_URL = redis_url  # rig accounts are made on this Redis
    manager = harness.Panel(panel_processes["worker"], celery_app)
    yield manager
    # Handle what this test left in the panel queue before its rows are flushed, and drop rig messages.
    manager.roundtrip(timeout=60)
    harness.purge_rig_queues(redis_url)


@pytest.fixture
def rigs(panel, redis_url, tmp_path):
    manager = Rigs(redis_url, tmp_path, panel.worker)
    yield manager
    manager.stop_all()


# --- browser fixtures (tests/test_browser.py): pytest-playwright driving Debian Chromium ---------------
def system_chromium():
    """The distribution's Chromium (MORPHEUS_CHROMIUM overrides); None means Playwright's own download."""
    import shutil

    return os.environ.get("MORPHEUS_CHROMIUM") or shutil.which("chromium")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    # `playwright install` cannot download everywhere (not here); a Debian/Ubuntu Chromium works as well.
    args = {**browser_type_launch_args,
            "args": ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run"]}
    executable = system_chromium()
    if executable:
        args["executable_path"] = executable
    return args


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    # Wide enough for two rig cards side by side, as on a provider's laptop.
    return {**browser_context_args, "viewport": {"width": 1366, "height": 900}}
