from django.db import migrations

# The rules a provider starts with (each editable or disabled on the Alerts page).
DEFAULTS = [
    {"kind": "rig_offline", "for_minutes": 0},
    {"kind": "gpu_temperature", "limit": 85, "for_minutes": 5},
    {"kind": "vram_full", "limit": 95, "for_minutes": 5},
    {"kind": "disk_full", "limit": 5, "free_gb": 10, "for_minutes": 0},
    {"kind": "deployment_failed", "for_minutes": 0},
    {"kind": "crash_loop", "limit": 3, "window_minutes": 10, "for_minutes": 0},
    {"kind": "clock_skew", "limit": 30, "for_minutes": 0},
    {"kind": "router_unhealthy", "for_minutes": 2},
    {"kind": "bid_model_down", "for_minutes": 2},
]


def create(apps, schema_editor):
    Rule = apps.get_model("alerts", "Rule")
    for fields in DEFAULTS:
        Rule.objects.get_or_create(kind=fields["kind"], defaults=fields)


def remove(apps, schema_editor):
    apps.get_model("alerts", "Rule").objects.filter(kind__in=[d["kind"] for d in DEFAULTS]).delete()


class Migration(migrations.Migration):
    dependencies = [("alerts", "0001_initial")]
    operations = [migrations.RunPython(create, remove)]
