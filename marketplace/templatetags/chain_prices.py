"""A price per second in MOR with every digit (a bid is a few hundred-millionths of a MOR), the exact wei on hover."""

from django import template
from django.utils.html import format_html

from hosting.economics import mor_text

register = template.Library()


@register.simple_tag
def wei_price(wei):
    try:
        exact = int(wei)
    except (TypeError, ValueError):
        return "–"
    return format_html('<span class="wei" title="{} wei">{} MOR/s</span>', exact, mor_text(exact))
