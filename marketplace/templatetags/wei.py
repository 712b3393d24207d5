"""Amounts in wei (integer strings from the rig) shown in MOR or ETH, with the exact value on hover."""

from decimal import Decimal

from django import template
from django.utils.html import format_html

register = template.Library()


def token_text(wei, places=4):
    value = Decimal(int(wei)) / Decimal(10**18)
    shown = f"{value:,.{places}f}"
    if value and Decimal(shown.replace(",", "")) == 0:
        shown = f"< {Decimal(1).scaleb(-places)}"
    return shown


@register.simple_tag
def wei_amount(wei, unit="MOR"):
    if wei in (None, ""):
        return "–"
    try:
        exact = int(wei)
    except (TypeError, ValueError):
        return "–"
    return format_html('<span class="wei" title="{} wei">{} {}</span>', exact, token_text(exact), unit)
