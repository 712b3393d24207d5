"""The audit log page (operators and viewers: "a partner, an auditor" reads it) and its CSV export."""

import csv
import datetime

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone

from audit import trail
from audit.log import record

CSV_HEADER = ["time", "user", "action", "target", "rig", "outcome", "address", "channel", "source", "id", "detail"]
# A cell a spreadsheet would run as a formula (OWASP's list: = + - @, and tab / carriage return).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class FilterForm(forms.Form):
    user = forms.CharField(required=False, max_length=150)
    action = forms.CharField(required=False, max_length=50)
    outcome = forms.ChoiceField(required=False, choices=[("", "any outcome")] + [(o, o) for o in trail.OUTCOMES])
    q = forms.CharField(required=False, max_length=200, label="Rig or target contains")
    since = forms.DateField(required=False, label="From", input_formats=["%Y-%m-%d"])
    until = forms.DateField(required=False, label="To", input_formats=["%Y-%m-%d"])
    via = forms.ChoiceField(required=False, label="Channel",
                            choices=[("", "any channel")] + [(c, c) for c in trail.CHANNELS])

    def clean(self):
        data = super().clean()
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            raise forms.ValidationError("The “From” day is after the “To” day.")
        return data

    def filters(self):
        data = self.cleaned_data
        return {"user": data["user"].strip(), "action": data["action"].strip(), "outcome": data["outcome"],
                "text": data["q"].strip(), "since": data["since"], "until": data["until"], "via": data["via"]}


def safe_cell(value):
    """A CSV cell that a spreadsheet shows as text: one starting like a formula gets a leading quote."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_line(entry):
    return [safe_cell(value) for value in (
        entry["at"].astimezone(datetime.timezone.utc).isoformat(), entry["user"], entry["action"], entry["target"],
        entry["rig"], entry["outcome"], entry["address"], entry["via"], entry["source"], entry["id"], entry["detail"])]


class _Echo:
    def write(self, value):
        return value


def _csv_response(request, form):
    writer = csv.writer(_Echo())

    def lines():
        yield writer.writerow(CSV_HEADER)
        for row in trail.rows(**form.filters()).iterator(chunk_size=2000):
            yield writer.writerow(csv_line(trail.entry(row)))

    record("audit.export", request=request,
           detail={key: str(value) for key, value in form.filters().items() if value})
    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="audit-{timezone.now():%Y%m%d-%H%M%S}.csv"'
    return response


@login_required
def audit_log(request):
    form = FilterForm(request.GET)  # every field is optional: no filter is a valid filter
    valid = form.is_valid()
    if valid and request.GET.get("format") == "csv":
        return _csv_response(request, form)
    page = None
    if valid:
        page = Paginator(trail.rows(**form.filters()), settings.AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
        page.entries = [trail.entry(row) for row in page.object_list]
    query = request.GET.copy()
    query.pop("page", None)
    query.pop("format", None)
    context = {
        "form": form, "page": page, "query": query.urlencode(),
        "usernames": get_user_model().objects.order_by("username").values_list("username", flat=True),
        "actions": trail.known_actions(),
    }
    return render(request, "audit/audit_log.html", context, status=200 if valid else 400)
