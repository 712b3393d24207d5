"""The fit planner in the pages: a model's "which of my rigs can host this, and how", and the host form it fills."""

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from hosting.models import Build, Deployment
from models_catalog.models import CatalogModel, ModelFile, RigFile
from tests.helpers import make_node, page, queued_messages
from tests.test_planner import CPU_RIG, SEED_RIG, llama_8b, llama_70b, rig

pytestmark = pytest.mark.django_db

Q4_SIZE, Q8_SIZE = 4_920_000_000, 8_540_000_000


@pytest.fixture
def llama():
    model = CatalogModel.objects.create(repo_id="meta/Llama-3.1-8B-GGUF", name="Llama 3.1 8B")
    q4 = ModelFile.objects.create(model=model, filename="llama-Q4_K_M.gguf", quant="Q4_K_M", size=Q4_SIZE,
                                  facts=llama_8b("Q4_K_M"))
    ModelFile.objects.create(model=model, filename="llama-Q8_0.gguf", quant="Q8_0", size=Q8_SIZE,
                             facts=llama_8b("Q8_0"))
    return q4


@pytest.fixture
def rigs_(db):
    alpha, _token = make_node("alpha", hardware=SEED_RIG)
    cpu, _token = make_node("cpu-box", hardware=CPU_RIG)
    yield alpha, cpu
    queued_messages(alpha.queue)  # leaves the memory:// broker empty for the next test


def host_link(node, rig_file):
    return f'href="/rigs/{node.name}/deployments/new/?file={rig_file.pk}"'


@pytest.mark.parametrize("who, status", [("anonymous", 302), ("viewer", 200), ("operator", 200)])
def test_it_shows_the_plan_to_viewers_and_operators_only(client, viewer, operator, llama, rigs_, who, status):
    if who != "anonymous":
        client.force_login(viewer if who == "viewer" else operator)
    response = client.get(llama.get_absolute_url())
    assert response.status_code == status
    if status == 200:
        assert "fits on 2× RTX 3090 with" in page(response)


def test_it_says_which_rigs_can_host_a_file_and_links_the_host_form_where_the_file_is(operator_client, llama,
                                                                                     rigs_):
    alpha, cpu = rigs_
    copy = RigFile.objects.create(node=alpha, model_file=llama, path="/models/llama-Q4_K_M.gguf", size=Q4_SIZE)
    content = page(operator_client.get(llama.get_absolute_url()))
    assert 'data-node="alpha" data-fits="yes"' in content
    assert "--n-gpu-layers 33 --tensor-split" not in content  # the default split: no flag to write
    assert "--n-gpu-layers 33" in content and "--threads 8" in content
    assert host_link(alpha, copy) in content
    # The CPU box runs it in its 32 GB of RAM, and says so; the file is not there yet.
    assert 'data-node="cpu-box" data-fits="yes"' in content
    assert "runs on the CPU only (no GPU)" in content
    assert "not on this rig: download it above" in content


def test_a_viewer_sees_the_plan_without_the_host_links(viewer_client, llama, rigs_):
    alpha, _cpu = rigs_
    copy = RigFile.objects.create(node=alpha, model_file=llama, path="/models/llama-Q4_K_M.gguf", size=Q4_SIZE)
    content = page(viewer_client.get(llama.get_absolute_url()))
    assert "fits on 2× RTX 3090" in content and host_link(alpha, copy) not in content


def test_a_70b_that_does_not_fit_says_what_it_needs_and_what_to_try(operator_client, db):
    make_node("single", hardware=rig(24))
    model = CatalogModel.objects.create(repo_id="meta/Llama-3.1-70B-GGUF", name="Llama 3.1 70B")
    big = ModelFile.objects.create(model=model, filename="70b-Q4_K_M.gguf", quant="Q4_K_M", size=42_500_000_000,
                                   facts=llama_70b("Q4_K_M"))
    ModelFile.objects.create(model=model, filename="70b-IQ2_XS.gguf", quant="IQ2_XS", size=21_100_000_000)
    content = page(operator_client.get(big.get_absolute_url()))
    assert 'data-node="single" data-fits="no"' in content
    # The smaller file of the same model in the catalogue, or fewer layers on the GPU and the rest on the CPU.
    assert "needs 41 GB, rig has 24 GB — try IQ2_XS, or n-gpu-layers 45 (the rest on the CPU, slower)" in content
    assert "--n-gpu-layers 45 --ctx-size 4096" in content  # the flags still run: the most layers that fit


def test_the_context_and_slots_asked_for_are_planned(operator_client, llama, rigs_):
    content = page(operator_client.get(llama.get_absolute_url() + "?ctx_size=16384&parallel=8"))
    assert "--ctx-size 16384 --parallel 8" in content
    bad = page(operator_client.get(llama.get_absolute_url() + "?ctx_size=12&parallel=0"))
    assert "Context size: Ensure this value is greater than or equal to 256." in bad
    assert "Parallel slots: Ensure this value is greater than or equal to 1." in bad


def test_more_context_per_slot_than_trained_is_refused_with_the_reason(operator_client, llama, rigs_):
    content = page(operator_client.get(llama.get_absolute_url() + "?ctx_size=1048576&parallel=1"))
    assert "above the 131072 the model was trained on" in content


def test_a_header_read_before_the_planner_existed_is_read_again(operator_client, llama, rigs_,
                                                               django_capture_on_commit_callbacks, monkeypatch):
    facts = dict(llama.facts)
    facts.pop("planner_facts")
    ModelFile.objects.filter(pk=llama.pk).update(facts=facts)
    cache.clear()  # a read asked for by an earlier test's page of the same id
    asked = []
    monkeypatch.setattr("models_catalog.views.read_model_facts.delay", asked.append)
    with django_capture_on_commit_callbacks(execute=True):
        content = page(operator_client.get(llama.get_absolute_url()))
    assert "the header was read before the planner existed: read it again" in content
    assert asked == [llama.pk]
    llama.refresh_from_db()
    assert llama.facts_at is None  # the page polls until the new read lands


def test_the_plan_costs_the_same_queries_for_two_rigs_as_for_twelve(operator_client, llama, rigs_):
    operator_client.get(llama.get_absolute_url())
    with CaptureQueriesContext(connection) as two:
        operator_client.get(llama.get_absolute_url())
    for n in range(10):
        make_node(f"more-{n}", hardware=SEED_RIG)
    with CaptureQueriesContext(connection) as twelve:
        operator_client.get(llama.get_absolute_url())
    assert len(twelve) == len(two)


# --- the host form ----------------------------------------------------------------------------------------------
@pytest.fixture
def alpha_file(llama, rigs_):
    alpha, _cpu = rigs_
    Build.objects.create(node=alpha, status=Build.READY, is_default=True, binary_path="/opt/llama/llama-server",
                         version="b1")
    return RigFile.objects.create(node=alpha, model_file=llama, path="/models/llama-Q4_K_M.gguf", size=Q4_SIZE)


def test_the_host_form_starts_at_the_planners_flags_for_the_file_it_came_from(operator_client, alpha_file):
    RigFile.objects.create(node=alpha_file.node, path="/models/other.gguf", size=1 << 20)  # not the only file
    response = operator_client.get(f"/rigs/alpha/deployments/new/?file={alpha_file.pk}&parallel=8")
    form = response.context["form"]
    plan = response.context["plan"]
    assert form["model_file"].value() == alpha_file.pk
    assert (form["n_gpu_layers"].value(), form["parallel"].value(), form["threads"].value()) == (33, 8, 8)
    assert form["ctx_size"].value() == plan.flags["ctx_size"] == plan.max_ctx_size
    assert form["ctx_size"].value() <= 131072 * 8 and form["ctx_size"].value() > 8192
    content = page(response)
    assert f"Fit planner for llama-Q4_K_M.gguf: {plan.summary}" in content
    assert f'href="/rigs/alpha/deployments/new/?file={alpha_file.pk}" id="use-plan">fill the form with them' in content


def form_data(rig_file, **changes):
    build = Build.objects.get(node=rig_file.node)
    return {"name": "llama", "model_file": rig_file.pk, "build": build.pk, "host": "127.0.0.1", "port": 9100,
            "ctx_size": 8192, "n_gpu_layers": 99, "parallel": 4, "flash_attn": "auto", "cache_type_k": "f16",
            "cache_type_v": "f16", **changes}


def test_settings_that_do_not_fit_are_saved_with_the_planners_warning(operator_client, alpha_file,
                                                                     django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post("/rigs/alpha/deployments/new/",
                                        form_data(alpha_file, ctx_size=524288, parallel=8), follow=True)
    deployment = Deployment.objects.get()
    assert (deployment.ctx_size, deployment.parallel) == (524288, 8)
    content = page(response)
    assert "The fit planner says this does not fit: needs" in content and "Saved as you asked" in content


def test_settings_that_fit_save_without_a_planner_warning(operator_client, alpha_file,
                                                          django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post("/rigs/alpha/deployments/new/", form_data(alpha_file), follow=True)
    assert Deployment.objects.exists() and "does not fit" not in page(response)


@pytest.mark.parametrize("changes, reason", [
    ({"tensor_split": "1,1,1"}, "tensor split 1,1,1 has 3 share(s) for the rig's 2 GPU(s): give one per GPU"),
    ({"n_gpu_layers": 40}, "n-gpu-layers 40 is more than the model's 32 layers and its output layer (33)"),
    ({"preset": "seed-dual-gpu", "tensor_split": ""}, None),  # the seed's dual preset fits the seed's dual rig
])
def test_combinations_llama_server_cannot_run_are_refused_with_the_reason(operator_client, alpha_file, changes,
                                                                          reason):
    response = operator_client.post("/rigs/alpha/deployments/new/", form_data(alpha_file, **changes))
    if reason is None:
        assert response.status_code == 302 and Deployment.objects.get().tensor_split == "1,1"
    else:
        assert response.status_code == 200 and not Deployment.objects.exists()
        assert reason in page(response)


def test_the_seed_dual_preset_is_refused_on_a_one_gpu_rig(operator_client, alpha_file):
    alpha = alpha_file.node
    alpha.hardware = rig(24)
    alpha.save(update_fields=["hardware"])
    response = operator_client.post("/rigs/alpha/deployments/new/",
                                    form_data(alpha_file, preset="seed-dual-gpu"))
    assert response.status_code == 200 and not Deployment.objects.exists()
    assert "tensor split 1,1 has 2 share(s) for the rig's 1 GPU(s)" in page(response)


def test_choosing_another_file_in_the_form_reloads_it_at_that_files_plan(operator_client, alpha_file):
    other = RigFile.objects.create(node=alpha_file.node, path="/models/other.gguf", size=1 << 20)
    response = operator_client.get(f"/rigs/alpha/deployments/new/?file={other.pk}")
    content = page(response)
    # On change the select asks for the plan of the file chosen, shown above the form; it overwrites no field.
    assert 'hx-get="/rigs/alpha/deployments/new/" hx-trigger="change" hx-target="#plan-summary"' in content
    assert "Fit planner: the model's header has not been read yet" in content  # a scanned file with no facts
    # What the select sends on change wins over the file the page came from.
    response = operator_client.get(f"/rigs/alpha/deployments/new/?file={other.pk}&model_file={alpha_file.pk}")
    assert response.context["form"]["model_file"].value() == alpha_file.pk
    assert response.context["form"]["n_gpu_layers"].value() == 33


def test_the_edit_page_shows_the_plan_of_the_saved_settings(operator_client, alpha_file):
    deployment = Deployment.objects.create(node=alpha_file.node, name="llama", model_file=alpha_file,
                                           build=Build.objects.get(), port=9100, ctx_size=8192, parallel=4)
    content = page(operator_client.get(f"/rigs/alpha/deployments/{deployment.pk}/edit/"))
    assert "Fit planner for llama-Q4_K_M.gguf: fits on 2× RTX 3090 with" in content
