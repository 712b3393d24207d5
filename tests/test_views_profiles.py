"""Planned builds: the seed template, creating, copying and editing a parts list."""

from decimal import Decimal

import pytest

from nodes.models import HardwareProfile, Part
from tests.helpers import make_node, page

pytestmark = pytest.mark.django_db

SEED_TEMPLATE = "Seed sample build: 2x RTX 3090"



@pytest.fixture
def seed():
    return HardwareProfile.objects.get(name=SEED_TEMPLATE)


def build_form(name, parts, existing=(), **fields):
    """POST data for the planned-build form: `parts` are new rows, `existing` are (part, changes) pairs."""
    data = {"name": name, "notes": fields.pop("notes", ""), "planned_ram_gb": fields.pop("planned_ram_gb", ""),
            "planned_vram_gb": fields.pop("planned_vram_gb", "")}
    rows = [{"id": part.pk, "category": part.category, "description": part.description, "quantity": part.quantity,
             "unit_price": part.unit_price, **changes} for part, changes in existing]
    rows += [dict(id="", category=c, description=d, quantity=q, unit_price=p) for c, d, q, p in parts]
    data.update({"parts-TOTAL_FORMS": len(rows), "parts-INITIAL_FORMS": len(existing),
                 "parts-MIN_NUM_FORMS": 0, "parts-MAX_NUM_FORMS": 1000})
    for i, row in enumerate(rows):
        for key, value in row.items():
            if key == "DELETE" and not value:
                continue
            data[f"parts-{i}-{key}"] = value
    return data


def test_it_ships_the_seed_build_as_a_template(seed):
    assert seed.is_template
    assert seed.total_cost == Decimal("4500.00")
    assert seed.planned_gpu_count == 2
    assert seed.planned_cpu == "Intel i7-13700K"
    assert {part.category for part in seed.parts.all()} == {
        "cpu", "cooler", "motherboard", "ram", "ssd", "gpu", "case", "psu", "fans"}


def test_it_shows_the_seed_build_with_its_parts_and_total(viewer_client, seed):
    content = page(viewer_client.get(seed.get_absolute_url()))
    assert "Intel i7-13700K" in content and "MSI GeForce RTX 3090 VENTUS 3X 24G OC" in content
    assert '<th id="total-cost">$4,500.00</th>' in content
    assert "Planned: 2 GPUs × 24 GB VRAM, 64 GB RAM." in content


def test_it_lists_planned_builds_with_their_rigs(viewer_client, seed):
    make_node("alpha", profile=seed)
    content = page(viewer_client.get("/profiles/"))
    assert SEED_TEMPLATE in content and "template" in content
    assert "$4,500.00" in content
    assert '<a href="/rigs/alpha/">alpha</a>' in content


# --- who may see and do what ---------------------------------------------------------------------
@pytest.mark.parametrize("url", ["/profiles/", "/profiles/new/", "/profiles/{pk}/", "/profiles/{pk}/edit/"])
def test_it_sends_anonymous_visitors_to_the_login_page(client, seed, url):
    response = client.get(url.format(pk=seed.pk))
    assert response.status_code == 302 and response["Location"].startswith("/login/?next=")


def test_it_shows_a_viewer_no_way_to_change_a_build(viewer_client, seed):
    for url in ("/profiles/", seed.get_absolute_url()):
        content = page(viewer_client.get(url))
        for action in ("New planned build", "Edit", "Copy", ">copy<", "/profiles/new/"):
            assert action not in content, (url, action)


def test_it_shows_an_operator_the_ways_to_change_a_build(operator_client, seed):
    assert "New planned build" in page(operator_client.get("/profiles/"))
    content = page(operator_client.get(seed.get_absolute_url()))
    assert f'href="/profiles/{seed.pk}/edit/"' in content and f'href="/profiles/new/?from={seed.pk}"' in content


def test_it_refuses_a_viewers_forged_build_changes(viewer_client, seed):
    before = list(Part.objects.values()), list(HardwareProfile.objects.values())
    assert viewer_client.get("/profiles/new/").status_code == 403
    assert viewer_client.get(f"/profiles/{seed.pk}/edit/").status_code == 403
    new = build_form("Sneaky build", [("gpu", "RTX 4090", 8, "1.00")])
    assert viewer_client.post("/profiles/new/", new).status_code == 403
    cheaper = build_form(seed.name, [], existing=[(part, {"unit_price": "0.01"}) for part in seed.parts.all()])
    assert viewer_client.post(f"/profiles/{seed.pk}/edit/", cheaper).status_code == 403
    assert (list(Part.objects.values()), list(HardwareProfile.objects.values())) == before


# --- creating and editing ------------------------------------------------------------------------
def test_it_creates_a_planned_build_with_parts_and_totals_it(operator_client):
    data = build_form(
        "4x 4090 box",
        [("cpu", "AMD Threadripper 7960X", 1, "1399.00"), ("gpu", "RTX 4090 24 GB", 4, "1799.99"),
         ("psu", "2x 1600 W", 2, "450.00")],
        planned_ram_gb=256, planned_vram_gb=24, notes="for 70B models",
    )
    response = operator_client.post("/profiles/new/", data)
    profile = HardwareProfile.objects.get(name="4x 4090 box")
    assert response.status_code == 302 and response["Location"] == profile.get_absolute_url()
    assert not profile.is_template
    assert (profile.planned_ram_gb, profile.planned_vram_gb, profile.notes) == (256, 24, "for 70B models")
    assert profile.planned_gpu_count == 4
    assert profile.total_cost == Decimal("1399.00") + 4 * Decimal("1799.99") + 2 * Decimal("450.00")
    assert "$9,498.96" in page(operator_client.get(profile.get_absolute_url()))


def test_it_refuses_a_build_without_a_name_or_with_a_taken_one(operator_client, seed):
    count = HardwareProfile.objects.count()
    for name in ("", SEED_TEMPLATE):
        response = operator_client.post("/profiles/new/", build_form(name, [("gpu", "RTX 3090", 1, "900")]))
        assert response.status_code == 200
        assert response.context["form"].errors["name"]
    assert HardwareProfile.objects.count() == count
    assert Part.objects.filter(description="RTX 3090").count() == 0


def test_it_refuses_a_part_with_a_negative_quantity_or_a_bad_price(operator_client):
    for bad in [("gpu", "RTX 3090", -1, "900"), ("gpu", "RTX 3090", 1, "nine hundred")]:
        response = operator_client.post("/profiles/new/", build_form("Broken", [bad]))
        assert response.status_code == 200
        assert not response.context["formset"].is_valid()
    assert not HardwareProfile.objects.filter(name="Broken").exists()


def test_it_edits_a_build_changing_removing_and_adding_parts(operator_client):
    profile = HardwareProfile.objects.create(name="Garage box")
    cpu = Part.objects.create(profile=profile, category="cpu", description="i5-12400", unit_price=Decimal("150"))
    gpu = Part.objects.create(profile=profile, category="gpu", description="RTX 3060 12 GB", quantity=2,
                              unit_price=Decimal("300"))
    data = build_form("Garage box v2", [("ssd", "2 TB NVMe", 1, "120.00")],
                      existing=[(cpu, {"DELETE": "on"}), (gpu, {"quantity": 3})])
    response = operator_client.post(f"/profiles/{profile.pk}/edit/", data)
    assert response.status_code == 302

    profile.refresh_from_db()
    assert profile.name == "Garage box v2"
    assert sorted((p.description, p.quantity) for p in profile.parts.all()) == [("2 TB NVMe", 1),
                                                                               ("RTX 3060 12 GB", 3)]
    assert profile.total_cost == Decimal("1020.00")
    assert profile.planned_gpu_count == 3


def test_it_starts_a_copy_of_the_template_with_its_parts(operator_client, seed):
    response = operator_client.get(f"/profiles/new/?from={seed.pk}")
    assert response.status_code == 200
    form, formset = response.context["form"], response.context["formset"]
    assert form.initial["name"] == f"{SEED_TEMPLATE} (copy)"
    assert [f.initial["description"] for f in formset.forms if f.initial][:2] == [
        "Intel i7-13700K", "Thermalright Aqua Elite V3 Liquid"]
    assert len([f for f in formset.forms if f.initial]) == seed.parts.count()
    assert HardwareProfile.objects.count() == 1  # nothing saved until the provider submits
