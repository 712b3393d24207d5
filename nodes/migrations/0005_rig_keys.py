import morpheus_admin.sealing
from django.db import migrations, models


class Migration(migrations.Migration):
    """Rigs sign with keys derived from their token, so the panel keeps the token sealed instead of its hash.

    A hash cannot give the key back: rigs enrolled before this get no key until their token is rotated (their
    page says so).
    """

    dependencies = [("nodes", "0004_alter_operation_kind")]

    operations = [
        migrations.RemoveField(model_name="node", name="token_hash"),
        migrations.AddField(model_name="node", name="token",
                            field=morpheus_admin.sealing.SealedTextField(blank=True, editable=False)),
        migrations.AddField(model_name="node", name="command_rejected_at",
                            field=models.DateTimeField(blank=True, null=True)),
        migrations.AddField(model_name="node", name="command_rejected_reason",
                            field=models.CharField(blank=True, max_length=300)),
        migrations.AddField(model_name="node", name="report_seq", field=models.BigIntegerField(default=0)),
        migrations.AddField(model_name="node", name="clock_offset", field=models.FloatField(blank=True, null=True)),
    ]
