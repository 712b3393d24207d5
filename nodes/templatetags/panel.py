"""Filters for the panel's pages: an operation's result as a table in human units, a 404 in the product's words."""

import math
import re
from datetime import datetime, timezone as dt_timezone

from django import template
from django.template.defaultfilters import capfirst, filesizeformat
from django.utils import dateformat, timezone
from django.utils.html import format_html, format_html_join

from nodes import enrolment
from nodes.agent.supervisor import duration_text

register = template.Library()

# Result keys as the agent names them (nodes/agent/tasks/): which hold bytes, seconds or a Unix time.
BYTE_KEYS = {"size", "bytes", "bytes_fetched", "resumed_from"}
SECOND_KEYS = {"seconds", "uptime", "restart_in"}
TIME_KEYS = {"agent_time"}
LABELS = {"node": "rig", "build_id": "build", "sha256": "SHA-256"}

# get_object_or_404 says "No <class name> matches the given query."; a provider knows these by other names.
THINGS = {"Node": "rig", "Operation": "operation", "HardwareProfile": "planned build", "Part": "part",
          "CatalogModel": "model", "ModelFile": "model file", "RigFile": "model file on this rig",
          "Build": "llama.cpp build", "Deployment": "deployment"}


@register.filter
def result_table(result):
    """An operation's result (a JSON object) as a key → value table; nested objects nest, lists are lists."""
    if not isinstance(result, dict):
        return _text("", result)
    rows = ((capfirst(LABELS.get(key, key.replace("_", " "))), _text(key, value)) for key, value in result.items())
    return format_html('<table class="result">{}</table>',
                       format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", rows))


def _text(key, value):
    if isinstance(value, dict):
        return result_table(value)
    if isinstance(value, list):
        if not value:
            return "—"
        items = ((_text(key, item),) for item in value)
        return format_html('<ul class="result">{}</ul>', format_html_join("", "<li>{}</li>", items))
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and math.isfinite(value):
        if key in BYTE_KEYS or key.endswith("_bytes"):
            return filesizeformat(value)
        if key in SECOND_KEYS or key.endswith("_seconds"):
            return duration_text(value) if value >= 1 else f"{value:.1f} s"
        if key in TIME_KEYS and 0 <= value < 2**33:  # a rig's clock, not trusted to be a sane timestamp
            return dateformat.format(timezone.localtime(datetime.fromtimestamp(value, dt_timezone.utc)), "Y-m-d H:i:s")
    if value is None or value == "":
        return "—"
    return str(value)


@register.filter
def not_found_text(exception):
    """What a 404 did not find, from the exception's message; nothing for a URL that names no page at all."""
    found = re.fullmatch(r"No (\w+) matches the given query\.", exception or "")
    if found:
        return f"There is no such {THINGS.get(found[1], 'item')}: it may have been removed, or the link is wrong."
    if not exception or exception in ("Http404", "Resolver404"):
        return ""
    return f"{capfirst(exception)}."


@register.simple_tag
def rig_broker_is_loopback():
    return enrolment.broker_is_loopback()
