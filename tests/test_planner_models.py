"""The fit planner called from catalogue rows: a catalogue file before download, a file on a rig's disk, a rig's
hardware report, and the sibling files it suggests."""

import re

import pytest

from models_catalog import fit, planner
from models_catalog.models import CatalogModel, ModelFile, RigFile
from tests.helpers import make_node
from tests.test_planner import SEED_RIG, llama_8b, llama_70b, rig, weights

pytestmark = pytest.mark.django_db


@pytest.fixture
def seed_rig():
    node, _token = make_node("seed-rig", hardware=SEED_RIG)
    return node


def catalogue(repo, facts_by_quant):
    model = CatalogModel.objects.create(repo_id=repo, name=repo.split("/")[1])
    return {quant: ModelFile.objects.create(model=model, filename=f"model-{quant}.gguf", quant=quant,
                                            size=weights(facts), facts=facts)
            for quant, facts in facts_by_quant.items()}


def test_a_catalogue_file_is_planned_on_a_rig_before_it_is_downloaded(seed_rig):
    files = catalogue("meta/Llama-3.1-8B-GGUF", {"Q8_0": llama_8b("Q8_0")})
    plan = fit.plan_model_file(files["Q8_0"], seed_rig, ctx_size=8192, parallel=4)
    assert plan.fits and plan.summary.startswith("fits on 2× RTX 3090 with ")
    assert plan.flags["n_gpu_layers"] == 33


def test_a_file_too_big_for_the_rig_suggests_a_smaller_sibling_from_the_catalogue():
    node, _token = make_node("one-3090", hardware=rig(24))
    smaller = {**llama_70b(), "file_type": "IQ1_S"}
    files = catalogue("meta/Llama-3.1-70B-GGUF", {"Q4_K_M": llama_70b(), "IQ1_S": smaller})
    files["IQ1_S"].size = 16_751_195_936
    files["IQ1_S"].save()
    plan = fit.plan_model_file(files["Q4_K_M"], node, ctx_size=8192, parallel=1)
    assert not plan.fits
    assert re.match(r"needs [\d.]+ GB, rig has 24 GB — try IQ1_S", plan.summary)


def test_a_rig_file_uses_its_own_facts_or_the_catalogue_files_when_its_own_are_old(seed_rig):
    files = catalogue("meta/Llama-3.1-8B-GGUF", {"Q4_K_M": llama_8b("Q4_K_M")})
    old = {k: v for k, v in llama_8b("Q4_K_M").items() if k != "planner_facts"}
    rig_file = RigFile.objects.create(node=seed_rig, path="/models/llama-Q4_K_M.gguf", size=files["Q4_K_M"].size,
                                      facts=old, model_file=files["Q4_K_M"])
    assert fit.plan_rig_file(rig_file, ctx_size=8192).fits
    unlinked = RigFile.objects.create(node=seed_rig, path="/models/other.gguf", size=1, facts=old)
    with pytest.raises(planner.HeaderNeedsReading):
        fit.plan_rig_file(unlinked)


def test_a_rig_that_has_not_reported_its_hardware_is_refused_with_the_reason():
    node, _token = make_node("new-rig")
    files = catalogue("meta/Llama-3.1-8B-GGUF", {"Q8_0": llama_8b("Q8_0")})
    with pytest.raises(planner.PlanRefused, match="not reported its hardware"):
        fit.plan_model_file(files["Q8_0"], node)


def test_rope_flags_let_a_slot_go_past_the_trained_context():
    assert fit.rope_scaling(["--rope-freq-scale=0.25", "--no-webui"])
    assert fit.rope_scaling(["--rope-freq-base=500000"])
    assert not fit.rope_scaling(["--no-webui"]) and not fit.rope_scaling(None)
