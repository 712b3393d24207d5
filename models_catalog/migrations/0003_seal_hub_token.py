from django.db import migrations

import morpheus_admin.sealing
from morpheus_admin.sealing import seal_column


class Migration(migrations.Migration):
    dependencies = [("models_catalog", "0002_curated_catalogue")]
    operations = [
        migrations.AlterField(
            model_name="hubsettings",
            name="token",
            field=morpheus_admin.sealing.SealedTextField(blank=True),
        ),
        # A panel upgraded in place: a token saved in clear is sealed now (and opened again if migrated back).
        seal_column("models_catalog", "HubSettings", "token"),
    ]
