"""The signed channel between the panel and one rig. Plain Python: the panel and the agent both import it.

Everything comes from the rig's token, which only that rig and the panel know:
- its broker password (the panel hands Redis only the password's SHA-256, as an ACL `#hash`),
- the key that authenticates commands (panel → rig) and reports (rig → panel), HMAC-SHA256,
- the key that seals secrets (a Hub token, an API key) for that rig alone, Fernet (AES-CBC + HMAC).
Labels keep the three apart (HKDF), and the MAC covers a direction prefix, so a report can never pass
for a command. No cipher is invented here: HKDF, HMAC and Fernet come from `cryptography` and `hmac`.
"""

import base64
import hashlib
import hmac
import json
import math
import os
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = 1
SEALED = "$sealed"
MAX_ENVELOPE_BYTES = 4 * 1024 * 1024
MAX_REPORT_BYTES = 1024 * 1024
_COMMAND, _REPORT = b"morpheus-command-v1\n", b"morpheus-report-v1\n"


class EnvelopeRejected(Exception):
    """Why a message was not accepted; the text is shown to the provider (it never holds a secret)."""


@dataclass(frozen=True)
class RigKeys:
    broker_password: str
    mac_key: bytes
    seal_key: bytes

    def __repr__(self):
        return "RigKeys(<hidden>)"


def _derive(token, label):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"morpheus-rig-v1", info=label).derive(token.encode())


@lru_cache(maxsize=4096)
def derive_keys(token):
    """The rig's three keys from its token (cached: the panel worker checks hundreds of reports a second)."""
    if not isinstance(token, str) or len(token) < 16:
        raise ValueError("a rig token is at least 16 characters")
    return RigKeys(
        broker_password=_derive(token, b"broker-password").hex(),
        mac_key=_derive(token, b"message-mac"),
        seal_key=base64.urlsafe_b64encode(_derive(token, b"secret-seal")),
    )


def broker_password_hash(keys):
    """What Redis stores for an ACL password (`ACL SETUSER ... #<hex>`): the panel never hands it the password."""
    return hashlib.sha256(keys.broker_password.encode()).hexdigest()


def _mac(key, prefix, body):
    return hmac.new(key, prefix + body, hashlib.sha256).hexdigest()


def _verified(keys, prefix, body, mac, limit, what, forged):
    """The JSON object in `body` once its MAC checks out (nothing is parsed before that)."""
    if not isinstance(body, str) or not isinstance(mac, str):
        raise EnvelopeRejected(f"unsigned {what}")
    raw = body.encode()
    if len(raw) > limit:
        raise EnvelopeRejected(f"{what} of {len(raw)} bytes is larger than {limit}")
    if not hmac.compare_digest(_mac(keys.mac_key, prefix, raw), mac):
        raise EnvelopeRejected(forged)
    try:
        data = json.loads(body)
    except ValueError:
        raise EnvelopeRejected(f"{what} is not JSON") from None
    if not isinstance(data, dict):
        raise EnvelopeRejected(f"{what} is not a JSON object")
    return data


def _dumps(data):
    return json.dumps(data, separators=(",", ":"), sort_keys=True, ensure_ascii=True)


# --- secrets sealed for one rig -----------------------------------------------------------------------
def seal(keys, text):
    """A secret as it travels to the rig: readable by that rig only, so no queue, log or kwargsrepr holds it."""
    return {SEALED: Fernet(keys.seal_key).encrypt(text.encode()).decode()}


def unseal(keys, value):
    """Open every sealed value inside `value` (dicts and lists are walked); anything else is returned as is."""
    if isinstance(value, dict):
        if set(value) == {SEALED}:
            try:
                return Fernet(keys.seal_key).decrypt(str(value[SEALED]).encode()).decode()
            except (InvalidToken, ValueError, TypeError):
                raise EnvelopeRejected("a sealed secret was not sealed for this rig") from None
        return {k: unseal(keys, v) for k, v in value.items()}
    if isinstance(value, list):
        return [unseal(keys, v) for v in value]
    return value


# --- commands: panel → rig ---------------------------------------------------------------------------
def sign_command(keys, *, task, rig, args, operation=None, ttl, now=None, rig_clock_offset=None):
    """The kwargs of the Celery message that carries one command: a JSON envelope and its MAC.

    Times are the panel's; `rig_clock_offset` (the rig's clock minus the panel's, as its reports show) travels
    signed with them, so a rig whose clock is minutes off still judges expiry on the panel's clock."""
    now = time.time() if now is None else now
    body = _dumps({
        "v": VERSION, "task": task, "rig": rig, "operation": operation, "args": args,
        "issued_at": round(now, 3), "expires": round(now + ttl, 3), "nonce": secrets.token_hex(16),
        "rig_clock_offset": None if rig_clock_offset is None else round(rig_clock_offset, 3),
    })
    return {"envelope": body, "mac": _mac(keys.mac_key, _COMMAND, body.encode())}


def open_command(keys, *, rig, task, envelope, mac, now=None, tolerance=30.0):
    """The envelope as a dict if it is authentic, for this rig, this task and current; else EnvelopeRejected.

    Replays are the caller's to refuse (NonceBook): this only reads one message.
    """
    data = _verified(keys, _COMMAND, envelope, mac, MAX_ENVELOPE_BYTES, "command",
                     "bad signature (not signed with this rig's key, or altered on the way)")
    if data.get("v") != VERSION:
        raise EnvelopeRejected("unknown envelope version")
    if data.get("rig") != rig:
        raise EnvelopeRejected(f"addressed to rig {str(data.get('rig'))[:40]!r}, not this one")
    if data.get("task") != task:
        raise EnvelopeRejected(f"signed for task {str(data.get('task'))[:60]!r}, delivered as {task!r}")
    issued, expires = data.get("issued_at"), data.get("expires")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (issued, expires)):
        raise EnvelopeRejected("envelope has no valid issue or expiry time")
    offset = data.get("rig_clock_offset")
    if offset is not None and (isinstance(offset, bool) or not isinstance(offset, (int, float))
                               or not math.isfinite(offset)):
        raise EnvelopeRejected("envelope has no valid clock offset")
    # This rig's clock brought to the panel's, as the panel last measured the difference.
    now = (time.time() if now is None else now) - (offset or 0)
    if now > expires + tolerance:
        raise EnvelopeRejected(f"expired {now - expires:.0f} s ago")
    if issued > now + tolerance:
        raise EnvelopeRejected(f"issued {issued - now:.0f} s in this rig's future (clock skew?)")
    nonce = data.get("nonce")
    if not isinstance(nonce, str) or not 16 <= len(nonce) <= 64:
        raise EnvelopeRejected("envelope has no nonce")
    if not isinstance(data.get("args"), dict):
        raise EnvelopeRejected("envelope arguments must be an object")
    operation = data.get("operation")
    if operation is not None and (isinstance(operation, bool) or not isinstance(operation, int) or operation < 1):
        raise EnvelopeRejected("envelope operation must be an id")
    return data


class NonceBook:
    """Nonces of accepted commands, kept until their envelope expires, on disk so a restart does not forget."""

    def __init__(self, path, tolerance=30.0):
        self.path, self.tolerance = Path(path), tolerance
        self._lock = threading.Lock()
        self._seen = self._load()

    def _load(self):
        try:
            data = json.loads(self.path.read_text())
            return {str(k): float(v) for k, v in data.items()}
        except (OSError, ValueError, AttributeError, TypeError):
            return {}

    def accept(self, nonce, expires, now=None):
        """True the first time a nonce is offered (and remembered); False for a replay."""
        now = time.time() if now is None else now
        with self._lock:
            self._seen = {n: t for n, t in self._seen.items() if t + self.tolerance >= now}
            if nonce in self._seen:
                return False
            self._seen[nonce] = float(expires)
            self._save()
            return True

    def _save(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".nonces-")
        with os.fdopen(fd, "w") as fh:
            json.dump(self._seen, fh)
        os.replace(tmp, self.path)


# --- reports: rig → panel ----------------------------------------------------------------------------
def sign_report(keys, *, rig, kind, payload, seq, now=None, ack=False):
    """The kwargs of one `panel.report` message: the rig's name in clear (to find its key), the rest signed.
    `ack`: the rig keeps this report until the panel acknowledges it (nodes/agent/outbox.py)."""
    fields = {"v": VERSION, "rig": rig, "kind": kind, "payload": payload, "seq": seq,
              "sent_at": round(time.time() if now is None else now, 3)}
    if ack:
        fields["ack"] = True
    body = _dumps(fields)
    return {"rig": rig, "body": body, "mac": _mac(keys.mac_key, _REPORT, body.encode())}


def open_report(keys, *, rig, body, mac):
    """The report as a dict (`kind`, `payload`, `seq`, `sent_at`, `ack`) if this rig signed it; else EnvelopeRejected."""
    data = _verified(keys, _REPORT, body, mac, MAX_REPORT_BYTES, "report", "bad report signature (agent token rejected)")
    if data.get("v") != VERSION or data.get("rig") != rig:
        raise EnvelopeRejected("report envelope does not match its rig")
    seq, sent_at = data.get("seq"), data.get("sent_at")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise EnvelopeRejected("report has no sequence number")
    if isinstance(sent_at, bool) or not isinstance(sent_at, (int, float)) or not math.isfinite(sent_at):
        raise EnvelopeRejected("report has no send time")
    data["ack"] = data.get("ack") is True
    return data


class Sequence:
    """The rig's report counter: strictly increasing, across restarts (blocks reserved on disk) and even across a
    wiped state folder: it never starts below the current time in microseconds, which no earlier count reached
    (a rig sends far fewer than a million reports a second). The panel orders each object's reports by it."""

    BLOCK = 10_000

    def __init__(self, path, now=None):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            stored = int(self.path.read_text().strip())
        except (OSError, ValueError):
            stored = 0
        floor = int((time.time() if now is None else now) * 1_000_000)
        start = max(stored, floor)
        self._next, self._limit = start, start

    def next(self):
        with self._lock:
            if self._next >= self._limit:
                self._limit = self._next + self.BLOCK
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(str(self._limit))
                os.replace(tmp, self.path)
            self._next += 1
            return self._next
