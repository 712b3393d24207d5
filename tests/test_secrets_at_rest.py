"""The deployment API key and the Hugging Face token are sealed in their columns, also after an in-place upgrade."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from hosting.models import Build, Deployment
from models_catalog.models import HubSettings, RigFile
from morpheus_admin.sealing import PREFIX
from tests.helpers import make_node

API_KEY = "sk-at-rest-0123456789"
HUB_TOKEN = "hf_at_rest_secret_token_42"


def raw(table, column, pk):
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {table} WHERE id = %s", [pk])
        return cursor.fetchone()[0]


def migrate(app, name=None):
    """`app` to migration `name`, or to its latest (what every other test expects)."""
    executor = MigrationExecutor(connection)
    if name is None:
        [(app, name)] = [leaf for leaf in executor.loader.graph.leaf_nodes() if leaf[0] == app]
    executor.migrate([(app, name)])


@pytest.fixture
def deployment(db):
    node, _token = make_node("alpha")
    build = Build.objects.create(node=node, source="/src/llama.cpp", ref="b1", status=Build.READY,
                                 binary_path="/var/lib/morpheus-agent/builds/1/llama-server")
    model_file = RigFile.objects.create(node=node, path="/var/lib/morpheus-agent/models/o__r/tiny.gguf", size=1)
    return Deployment.objects.create(node=node, name="tiny", model_file=model_file, build=build, port=8080,
                                     api_key=API_KEY)


def test_it_stores_the_api_key_sealed_and_reads_it_back(deployment):
    stored = raw("hosting_deployment", "api_key", deployment.pk)
    assert stored.startswith(PREFIX) and API_KEY not in stored
    assert Deployment.objects.get(pk=deployment.pk).api_key == API_KEY
    assert Deployment.objects.get(pk=deployment.pk).spec().api_key == API_KEY  # what travels to the rig


def test_it_stores_the_hub_token_sealed_and_reads_it_back(db):
    row = HubSettings.objects.create(token=HUB_TOKEN)
    stored = raw("models_catalog_hubsettings", "token", row.pk)
    assert stored.startswith(PREFIX) and HUB_TOKEN not in stored
    assert HubSettings.token_value() == HUB_TOKEN


def test_it_stores_no_secret_as_an_empty_column(db):
    row = HubSettings.objects.create()
    assert raw("models_catalog_hubsettings", "token", row.pk) == ""
    assert HubSettings.token_value() is None


@pytest.mark.parametrize("app, before, after", [("hosting", "0001_initial", "0002_seal_api_key"),
                                                ("models_catalog", "0002_curated_catalogue", "0003_seal_hub_token")])
def test_it_seals_the_clear_secrets_of_a_panel_upgraded_in_place(transactional_db, app, before, after):
    if app == "hosting":
        node, _token = make_node("alpha")
        build = Build.objects.create(node=node, source="/s", ref="b1", status=Build.READY,
                                     binary_path="/b/llama-server")
        model_file = RigFile.objects.create(node=node, path="/m/tiny.gguf", size=1)
        row = Deployment.objects.create(node=node, name="tiny", model_file=model_file, build=build, port=8080,
                                        api_key=API_KEY)
        empty = Deployment.objects.create(node=node, name="open", model_file=model_file, build=build, port=8081)
        table, column, secret, model = "hosting_deployment", "api_key", API_KEY, Deployment
    else:
        row = HubSettings.objects.create(token=HUB_TOKEN)
        empty = HubSettings.objects.create()
        table, column, secret, model = "models_catalog_hubsettings", "token", HUB_TOKEN, HubSettings
    try:
        migrate(app, before)  # back to the clear column: the secret is opened again
        assert raw(table, column, row.pk) == secret and raw(table, column, empty.pk) == ""
        migrate(app, after)  # the upgrade
        stored = raw(table, column, row.pk)
        assert stored.startswith(PREFIX) and secret not in stored
        assert raw(table, column, empty.pk) == ""
        # Only that column: later migrations may add others this schema does not have yet.
        assert getattr(model.objects.only(column).get(pk=row.pk), column) == secret
    finally:
        migrate(app)


@pytest.mark.django_db
def test_a_lost_secrets_key_reads_as_unset_and_says_so(settings, caplog):
    from morpheus_admin import sealing
    from nodes.models import Node

    node, _token = make_node("alpha")
    settings.SECRETS_KEY = sealing.new_key()  # the panel restarted with another key
    with caplog.at_level("ERROR", logger="morpheus.sealing"):
        reloaded = Node.objects.get(pk=node.pk)
    assert reloaded.token == "" and reloaded.keys is None  # its page asks for a new token
    assert "cannot be opened with this panel's secrets key" in caplog.text
