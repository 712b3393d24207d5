from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.db import transaction
from django.db.models import Count, Prefetch
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST
from django_htmx.http import HTMX_STOP_POLLING

from models_catalog import hub
from models_catalog.downloads import Refused, request_download
from models_catalog.fit import rigs_for
from models_catalog.forms import DownloadForm, FitForm, HubFileForm, TokenForm
from models_catalog.models import CatalogModel, HubSettings, ModelFile, RigFile
from models_catalog.tasks import read_model_facts
from nodes.agent import validation
from nodes.models import Node, Operation
from nodes.operations import start_operation
from nodes.permissions import require_operator
from nodes.reauth import require_recent_password


@login_required
def catalogue(request):
    models = CatalogModel.objects.prefetch_related(
        Prefetch("files", queryset=ModelFile.objects.annotate(rigs=Count("copies")))
    )
    unread = ModelFile.objects.filter(facts_at__isnull=True).count()
    return render(request, "models_catalog/catalogue.html", {"models": models, "unread": unread})


@login_required
@require_POST
def catalogue_refresh(request):
    """Sizes and facts of every file never read from the Hub (the curated ones ship with names only)."""
    require_operator(request)
    unread = list(ModelFile.objects.filter(facts_at__isnull=True).values_list("pk", flat=True))
    for pk in unread:
        transaction.on_commit(lambda pk=pk: read_model_facts.delay(pk))
    if unread:
        messages.info(request, f"Reading the size and header of {len(unread)} file{'s' if len(unread) != 1 else ''} "
                               "from the Hub.")
    else:
        messages.info(request, "Every file has been read from the Hub already.")
    return redirect("catalogue")


@login_required
def search(request):
    query = request.GET.get("q", "").strip()
    results, error = [], None
    if query:
        try:
            results = hub.search(query)
        except hub.HubError as exc:
            error = str(exc)
    known = set(CatalogModel.objects.values_list("repo_id", flat=True))
    return render(request, "models_catalog/search.html",
                  {"query": query, "results": results, "error": error, "known": known})


@login_required
def hub_repo(request, repo_id):
    revision = request.GET.get("revision", "main")
    listing, error = None, None
    try:
        listing = hub.repo_gguf_files(repo_id, revision)
    except (hub.HubError, validation.InvalidValue) as exc:
        error = str(exc)
    catalogued = set(ModelFile.objects.filter(model__repo_id=repo_id).values_list("filename", flat=True))
    return render(request, "models_catalog/hub_repo.html",
                  {"repo_id": repo_id, "revision": revision, "listing": listing, "error": error,
                   "catalogued": catalogued})


@login_required
@require_POST
def add_to_catalogue(request):
    require_operator(request)
    form = HubFileForm(request.POST)
    if not form.is_valid():
        messages.error(request, "; ".join(e for errors in form.errors.values() for e in errors))
        return redirect("model_search")
    repo_id, filename, revision = (form.cleaned_data[k] for k in ("repo_id", "filename", "revision"))
    try:
        listing = hub.repo_gguf_files(repo_id, revision)
    except hub.HubError as exc:
        messages.error(request, str(exc))
        return redirect("model_search")
    match = next((f for f in listing["files"] if f["filename"] == filename), None)
    if match is None:
        messages.error(request, f"{filename} is not a GGUF model in {repo_id} at {revision}")
        return redirect("hub_repo", repo_id=repo_id)
    with transaction.atomic():
        model, _ = CatalogModel.objects.get_or_create(
            repo_id=listing["repo_id"],
            defaults={"name": listing["repo_id"].split("/", 1)[1], "revision": revision, "added_by": request.user,
                      "downloads": listing["downloads"], "likes": listing["likes"]},
        )
        model_file, created = ModelFile.objects.update_or_create(
            model=model, filename=filename,
            defaults={"size": match["size"], "shards": match["shards"], "quant": match["quant"]},
        )
        transaction.on_commit(lambda: read_model_facts.delay(model_file.pk))
    messages.success(request, f"{filename} {'added to' if created else 'refreshed in'} the catalogue; "
                              "reading its header for the model facts.")
    return redirect(model_file)


FACTS_READ_EVERY = 120  # seconds between two header reads started by opening a page that has none yet


@login_required
def model_file_detail(request, pk):
    model_file = get_object_or_404(ModelFile.objects.select_related("model"), pk=pk)
    copies = model_file.copies.select_related("node")
    operations = Operation.objects.filter(kind=Operation.DOWNLOAD_MODEL, target=model_file.target) \
        .select_related("node", "requested_by")[:20]
    nodes = Node.objects.order_by("name")
    form = DownloadForm(node_choices=[(n.name, n.name) for n in nodes])
    fit_form = FitForm(request.GET or None)
    wanted = fit_form.cleaned_data if fit_form.is_valid() else {}
    fits = rigs_for(model_file, nodes, wanted.get("ctx_size"), wanted.get("parallel")) if model_file.facts else []
    context = {"model_file": model_file, "copies": copies, "operations": operations, "form": form,
               "fit_form": fit_form, "fits": fits}
    stale = model_file.facts and "planner_facts" not in model_file.facts  # read before the planner existed
    if (model_file.facts_at is None or stale) and cache.add(f"facts-read-{model_file.pk}", True, FACTS_READ_EVERY):
        # Never read (a curated entry), or read without what the planner needs: read it, once a while at most.
        if stale:
            ModelFile.objects.filter(pk=model_file.pk).update(facts_at=None)
            model_file.facts_at = None
        transaction.on_commit(lambda: read_model_facts.delay(model_file.pk))
    if request.htmx:
        response = render(request, "models_catalog/model_file_detail.html#live", context)
        if model_file.facts_at and not any(not op.is_terminal for op in operations):
            response.status_code = HTMX_STOP_POLLING
        return response
    return render(request, "models_catalog/model_file_detail.html", context)


@login_required
@require_POST
def refresh_facts(request, pk):
    require_operator(request)
    model_file = get_object_or_404(ModelFile, pk=pk)
    ModelFile.objects.filter(pk=pk).update(facts_at=None)
    transaction.on_commit(lambda: read_model_facts.delay(model_file.pk))
    messages.info(request, "Reading the header again.")
    return redirect(model_file)


@login_required
@require_POST
def download(request, pk):
    require_operator(request)
    model_file = get_object_or_404(ModelFile.objects.select_related("model"), pk=pk)
    nodes = {n.name: n for n in Node.objects.all()}
    form = DownloadForm(request.POST, node_choices=[(name, name) for name in nodes])
    if not form.is_valid():
        messages.error(request, "Choose at least one rig.")
        return redirect(model_file)
    started = []
    for name in form.cleaned_data["nodes"]:
        try:
            with transaction.atomic():
                started.append(request_download(model_file, nodes[name], request.user))
        except Refused as exc:
            messages.error(request, f"Not started: {exc}.")
    if started:
        messages.success(request, f"Download started on {', '.join(op.node.name for op in started)}.")
    return redirect(model_file)


@login_required
@require_recent_password
def hub_settings(request):
    require_operator(request)
    current = HubSettings.current()
    form = TokenForm(request.POST or None, token_set=bool(current.token))
    if request.method == "POST" and form.is_valid():
        if form.cleaned_data.get("clear"):
            current.token = ""
            messages.success(request, "Hugging Face token removed.")
        elif form.cleaned_data["token"]:
            current.token = form.cleaned_data["token"]
            messages.success(request, "Hugging Face token saved. It is not shown again.")
        current.updated_by = request.user
        current.save()
        return redirect("hub_settings")
    return render(request, "models_catalog/hub_settings.html", {"form": form, "token_set": bool(current.token)})


@login_required
def rig_files(request, name):
    node = get_object_or_404(Node, name=name)
    files = node.model_files.select_related("model_file__model")
    scans = node.operations.filter(kind=Operation.SCAN_MODELS)[:1]
    return render(request, "models_catalog/rig_files.html", {"node": node, "files": files, "last_scan": scans})


@login_required
@require_POST
def rig_scan(request, name):
    require_operator(request)
    node = get_object_or_404(Node, name=name)
    with transaction.atomic():
        operation = start_operation(node, Operation.SCAN_MODELS, request.user)
    return redirect(operation)


@login_required
def rig_file_delete(request, name, pk):
    require_operator(request)
    rig_file = get_object_or_404(RigFile.objects.select_related("node"), pk=pk, node__name=name)
    blockers = rig_file.blockers()
    if request.method == "POST":
        if blockers:
            steps = "; ".join(f"{action} {d.name}" for d, action in blockers)
            messages.error(request, f"{rig_file.basename} is used by deployment(s) "
                                    f"{', '.join(d.name for d, _ in blockers)}: {steps} first.")
            return redirect("rig_files", name=name)
        with transaction.atomic():
            operation = start_operation(rig_file.node, Operation.DELETE_MODEL_FILE, request.user,
                                        target=rig_file.path, payload={"path": rig_file.path})
        return redirect(operation)
    return render(request, "models_catalog/rig_file_confirm_delete.html", {"rig_file": rig_file, "blockers": blockers})
