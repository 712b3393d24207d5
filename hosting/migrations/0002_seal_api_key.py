from django.db import migrations

import morpheus_admin.sealing
from morpheus_admin.sealing import seal_column


class Migration(migrations.Migration):
    dependencies = [("hosting", "0001_initial")]
    operations = [
        migrations.AlterField(
            model_name="deployment",
            name="api_key",
            field=morpheus_admin.sealing.SealedTextField(blank=True),
        ),
        # A panel upgraded in place: the keys saved in clear are sealed now (and opened again if migrated back).
        seal_column("hosting", "Deployment", "api_key"),
    ]
