"""Secrets at rest in the panel (Hub token, API keys, rig tokens): Fernet with a key kept apart from SECRET_KEY.

The key comes from MORPHEUS_SECRETS_KEY, else from a 0600 key file (MORPHEUS_SECRETS_KEY_FILE, default
`<data dir>/secrets.key`) that the local run creates on first use. Production never creates one: a panel that
lost its key must say so, not seal new secrets with a fresh one it cannot read back later.
"""

import logging
import os
import threading
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models

PREFIX = "sealed:v1:"
log = logging.getLogger("morpheus.sealing")
_lock = threading.Lock()
_cache = {}


class SealError(ValueError):
    pass


def new_key():
    return Fernet.generate_key().decode()


def ensure_key_file(path):
    """Create the key file (0600) if it is missing; returns its key."""
    path = Path(path)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = new_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


def _key():
    if settings.SECRETS_KEY:
        return settings.SECRETS_KEY
    path = Path(settings.SECRETS_KEY_FILE)
    if path.exists() or not settings.PRODUCTION:
        return ensure_key_file(path)
    raise ImproperlyConfigured(
        f"no secrets key: set MORPHEUS_SECRETS_KEY or create {path} (0600) with "
        "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`")


def _fernet():
    key = _key()
    with _lock:
        fernet = _cache.get(key)
        if fernet is None:
            try:
                fernet = _cache[key] = Fernet(key.encode())
            except ValueError:
                raise ImproperlyConfigured("the secrets key is not a Fernet key (32 url-safe base64 bytes)") from None
        return fernet


def seal(text):
    """`text` encrypted for storage; the empty string stays empty (no secret set)."""
    if not text:
        return ""
    return PREFIX + _fernet().encrypt(str(text).encode()).decode()


def unseal(value):
    if not value:
        return ""
    if not value.startswith(PREFIX):
        raise SealError("stored secret is not sealed")
    return _opened(_key(), value)


@lru_cache(maxsize=4096)
def _opened(key, value):
    """The same ciphertext opens to the same text: the panel worker reads each rig's token on every report (bench/
    ingest.py), so it decrypts each one once per key."""
    try:
        return _fernet().decrypt(value[len(PREFIX):].encode()).decode()
    except InvalidToken:
        raise SealError("stored secret cannot be opened with this panel's secrets key (was the key changed?)") from None


class SealedTextField(models.TextField):
    """A text column that holds only ciphertext; Python sees the clear value. Not searchable, by design."""

    def from_db_value(self, value, expression, connection):
        if not value:
            return ""
        try:
            return unseal(value)
        except SealError as exc:
            # A lost or changed key must not take every page down: the secret reads as unset (a rig then asks for
            # a new token, the Hub token for a new value); the ciphertext stays until a new value replaces it.
            log.error("%s.%s: %s", self.model.__name__, self.name, exc)
            return ""

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        return seal(value) if value else ""


def seal_column(app_label, model_name, field_name):
    """A migration step sealing a column's clear values in place (and opening them again when migrated back).

    Raw SQL: the historical model already reads the column as a SealedTextField, which refuses clear values.
    """
    from django.db import migrations

    def convert(change):
        def run(apps, schema_editor):
            model = apps.get_model(app_label, model_name)
            quote = schema_editor.quote_name
            table, pk = quote(model._meta.db_table), quote(model._meta.pk.column)
            column = quote(model._meta.get_field(field_name).column)
            with schema_editor.connection.cursor() as cursor:
                cursor.execute(f"SELECT {pk}, {column} FROM {table}")  # names from the model, quoted; no user input
                for key, value in cursor.fetchall():
                    new = change(value or "")
                    if new != (value or ""):
                        cursor.execute(f"UPDATE {table} SET {column} = %s WHERE {pk} = %s", [new, key])
        return run

    sealed = convert(lambda value: value if not value or value.startswith(PREFIX) else seal(value))
    opened = convert(lambda value: unseal(value) if value.startswith(PREFIX) else value)
    return migrations.RunPython(sealed, opened)
