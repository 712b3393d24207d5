from decimal import Decimal

from django.db import migrations

# The seed document's sample build (2x RTX 3090, about $4,500 new), as an editable template.
SEED_PARTS = [
    ("cpu", "Intel i7-13700K", 1, "379.00"),
    ("cooler", "Thermalright Aqua Elite V3 Liquid", 1, "55.00"),
    ("motherboard", "ASRock B760 Pro RS ATX LGA1700", 1, "140.00"),
    ("ram", "Silicon Power XPOWER Zenith 64GB (2 x 32GB) DDR5-6000 CL30", 1, "180.00"),
    ("ssd", "Leven JPS600 1TB M.2-2280 PCIe 3.0 X4 NVMe", 1, "50.00"),
    ("gpu", "MSI GeForce RTX 3090 VENTUS 3X 24G OC", 1, "1600.00"),
    ("gpu", "EVGA FTW3 ULTRA HYBRID GAMING GeForce RTX 3090 24 GB", 1, "1700.00"),
    ("case", "Lian Li O11D EVO RGB ATX", 1, "165.00"),
    ("psu", "Apevia Galaxy 1000W 80+ Gold semi-modular ATX", 1, "110.00"),
    ("fans", "UNI Fan 120mm Reverse Infinity Mirror ARGB PWM", 1, "60.00"),
    ("fans", "UNI Fan 120mm Infinity Mirror ARGB PWM", 1, "61.00"),
]


def seed(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    for name in ("operators", "viewers"):
        Group.objects.get_or_create(name=name)
    HardwareProfile = apps.get_model("nodes", "HardwareProfile")
    Part = apps.get_model("nodes", "Part")
    profile, created = HardwareProfile.objects.get_or_create(
        name="Seed sample build: 2x RTX 3090",
        defaults={
            "is_template": True,
            "planned_ram_gb": 64,
            "planned_vram_gb": 24,
            "notes": "The Morpheus sample compute provider build: ~80 tok/s on 8B models. "
            "The author suggests a 1200-1500 W PSU once both GPUs are in, and a case with more top venting.",
        },
    )
    if created:
        Part.objects.bulk_create(
            Part(profile=profile, category=c, description=d, quantity=q, unit_price=Decimal(p))
            for c, d, q, p in SEED_PARTS
        )


class Migration(migrations.Migration):
    dependencies = [("nodes", "0001_initial"), ("auth", "0012_alter_user_first_name_max_length")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
