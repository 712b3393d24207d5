"""The dashboard's rig cards, and what a refresh sends: only the cards that changed.

The page polls every 2 s. With its request the browser sends what it shows (`X-Rig-Cards`: a hash of the rig
names in order, then a short fingerprint per card, in that order); the panel computes the same fingerprints from
the rows and answers with only the changed cards, swapped out of band, or 204 when nothing changed (htmx then
leaves the page alone). A fingerprint covers everything a card shows and nothing else: a card shows no clock-bound
text ("last seen" ages are written by the browser from the card's timestamp), so an unchanged rig costs nothing.
"""

import hashlib
import re
from collections import defaultdict
from html import escape  # the standard library's: Django's lazy wrapper was a tenth of each render

from django.contrib.humanize.templatetags.humanize import naturaltime
from django.db.models import Prefetch
from django.db.models.fields.json import KT
from django.urls import reverse
from django.utils.safestring import mark_safe

from nodes.models import GPU, Node

HEADER = "X-Rig-Cards"
FP_CHARS = 6  # 24 bits per card: a collision only delays that card's update until its next change
_HEADER_RE = re.compile(r"^([0-9a-f]{16}):((?:[0-9a-f]{%d})*)$" % FP_CHARS)


# What a card shows of a rig (the rest of the row, the sealed token and the hardware document stay unread).
NODE_FIELDS = ("name", "last_seen", "telemetry_interval", "token_rejected_at", "host_reading", "hardware_at")


def _rigs():
    return Node.objects.only(*NODE_FIELDS).annotate(gpu_note_text=KT("hardware__gpu_note"))


def cards(now):
    """Every rig ready to render: its GPUs as a plain list (`gpu_list`), its card fingerprinted."""
    nodes = list(_rigs().prefetch_related(
        Prefetch("gpus", queryset=GPU.objects.order_by("index"), to_attr="gpu_list")))
    serving = _serving()
    for node in nodes:
        shown = []
        for gpu in node.gpu_list:
            bars = gpu.bars
            gpu.bars_html = bars_html(bars)
            shown.append((gpu.index, gpu.name, bars))
        _fingerprint(node, shown, now, serving[node.pk])
    return nodes


def fingerprints(now):
    """Every rig with its card's fingerprint only, from rows (no model per GPU): what a refresh compares."""
    gpus = defaultdict(list)
    for node_id, index, name, *readings in (GPU.objects.order_by("node_id", "index")
                                            .values_list("node_id", "index", "name", *GPU.BAR_FIELDS)):
        gpus[node_id].append((index, name, GPU.bars_for(*readings)))
    serving = _serving()
    nodes = list(_rigs())
    for node in nodes:
        _fingerprint(node, gpus[node.pk], now, serving[node.pk])
    return nodes


def _serving():
    """rig id → [(deployment name, tokens/s text, slots text)] of its healthy servers with serving metrics: one query.
    The deployments app's model is reached through the relation, so the rigs app does not import it."""
    deployment = Node._meta.get_field("deployments").related_model
    rows = (deployment.objects.filter(desired_state="running", actual_state="healthy", serving_at__isnull=False)
            .order_by("node_id", "name").values_list("node_id", "name", "serving"))
    found = defaultdict(list)
    for node_id, name, serving in rows:
        if isinstance(serving, dict) and "error" not in serving:
            found[node_id].append((name, *serving_texts(serving)))
    return found


def serving_texts(serving):
    """("12.3 tok/s", "1/4 slots") from a deployment's serving metrics: numbers the panel checked and formats."""
    tps = serving.get("generated_tps")
    busy, total = serving.get("slots_busy"), serving.get("slots_total")
    return ("— tok/s" if tps is None else f"{tps:.1f} tok/s",
            "" if busy is None or total is None else f"{busy}/{total} slots busy")


def render_ready(nodes):
    """`nodes` (from fingerprints) with their GPUs loaded for rendering: one query whatever their number."""
    by_id = {node.pk: node for node in nodes}
    for node in nodes:
        node.gpu_list = []
    for gpu in GPU.objects.filter(node_id__in=by_id).order_by("node_id", "index"):
        gpu.bars_html = bars_html(gpu.bars)
        by_id[gpu.node_id].gpu_list.append(gpu)
    return nodes


# Cards are built here with format strings, not a template: at 200 rigs × 8 GPUs the template's variable lookups
# were most of each render (what a rig sent is escaped; labels and classes are constants).
_CARD = ('<article class="card status-{status}" id="rig-{name}" data-status="{status}" data-fp="{fp}"{oob}>'
         '<header><a href="{url}" class="rig-name">{name}</a><span class="badge {badge_class}">{badge}</span>'
         '</header><p class="muted">{seen}{cpu}</p>{gpus}{serving}</article>\n')
_GPU = '<div class="gpu" data-gpu="{index}"><div class="gpu-name">GPU {index} · {name}</div>{bars}</div>'


def card_html(node, oob=False):
    """One rig's card (node from `cards` or `render_ready`); `oob`: marked to replace itself in the page."""
    if not node.last_seen:
        seen = "waiting for its agent"
    elif node.card_status == Node.ONLINE:
        seen = "reporting"
    else:
        seen = (f'last seen <time datetime="{node.last_seen.isoformat()}" data-age>'
                f'{escape(naturaltime(node.last_seen))}</time>')
    if node.gpu_list:
        gpus = "".join(_GPU.format(index=gpu.index, name=escape(gpu.name), bars=gpu.bars_html)
                       for gpu in node.gpu_list)
    elif node.hardware_at:
        note = f" — {escape(node.gpu_note_text)}" if node.gpu_note_text else ""
        gpus = f'<p class="muted no-gpu">no GPUs{note}</p>'
    else:
        gpus = '<p class="muted no-gpu">hardware not reported yet</p>'
    rejected = node.token_rejected
    serving = ""
    if node.card_serving:
        serving = '<ul class="serving">' + "".join(
            f'<li data-deployment="{escape(name)}"><b>{escape(name)}</b><span>{tps} · {slots}</span></li>'
            for name, tps, slots in node.card_serving) + "</ul>"
    return _CARD.format(
        status=node.card_status, name=node.name, fp=node.card_fp, oob=' hx-swap-oob="true"' if oob else "",
        url=reverse("node_detail", args=[node.name]), badge_class="rejected" if rejected else node.card_status,
        badge="agent token rejected" if rejected else node.card_status, seen=seen,
        cpu="" if node.card_cpu is None else f" · CPU {node.card_cpu}%", gpus=gpus, serving=serving)


def cards_html(nodes, oob=False):
    return mark_safe("".join(card_html(node, oob) for node in nodes))


# The four bars of a GPU: label, percent, text.
# Short markup (a tenth of a megabyte less per 200 rigs): the track draws its own fill from --p (static/css/panel.css).
_BAR = '<div class="bar{level}"><b>{label}</b><i style="--p:{pct}%"></i><span>{text}</span></div>'


def bars_html(bars):
    """The bars' markup. Their labels are constants and their texts numbers the panel formatted (GPU.bars_for):
    nothing a rig sent verbatim, so nothing to escape."""
    return "".join(
        _BAR.format(label=label, pct=int(pct), text=text, level=" hot" if pct >= 90 else " warm" if pct >= 75 else "")
        for label, pct, text in bars
    )


def _fingerprint(node, gpus, now, serving=()):
    """Everything the card shows, hashed; the status, CPU and serving texts are kept on the node for the card."""
    node.card_status = node.status_at(now)
    node.card_cpu = None if not node.host_reading else f"{node.host_reading.get('cpu_percent', 0):.0f}"
    # A rig that stopped reporting shows no live serving figures: they would be its last ones, not live.
    node.card_serving = list(serving) if node.card_status == Node.ONLINE else []
    shown = [node.name, node.card_status, node.token_rejected, node.card_cpu, node.gpu_note_text or "",
             node.hardware_at is not None, gpus, node.card_serving]
    # The last-seen time shows only when the rig is not online: an online rig's card does not change with it.
    if node.card_status != Node.ONLINE and node.last_seen:
        shown.append(node.last_seen.isoformat())
    node.card_fp = hashlib.blake2b(repr(shown).encode(), digest_size=8).hexdigest()[:FP_CHARS]


def names_hash(names):
    return hashlib.blake2b("\n".join(names).encode(), digest_size=8).hexdigest()


def shown_by_browser(header):
    """(hash of the rig names, [fingerprint per card]) from the request header, or None when absent or malformed."""
    match = _HEADER_RE.match(header or "")
    if not match:
        return None
    fps = match.group(2)
    return match.group(1), [fps[i:i + FP_CHARS] for i in range(0, len(fps), FP_CHARS)]


def changed(nodes, shown):
    """The rigs whose card differs from what the browser shows; None when the set of rigs differs (all cards)."""
    if shown is None:
        return None
    names_seen, fps = shown
    if names_seen != names_hash([n.name for n in nodes]) or len(fps) != len(nodes):
        return None
    return [node for node, fp in zip(nodes, fps) if node.card_fp != fp]
