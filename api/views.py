"""The API tokens page: each user makes, sees and revokes their own tokens. A new token's secret is in the one
response that creates it and nowhere else (the row keeps its hash)."""

from datetime import timedelta

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone

from api.models import ApiToken
from audit.log import record
from nodes.permissions import is_operator

EXPIRY_CHOICES = [("", "never"), ("30", "in 30 days"), ("90", "in 90 days"), ("365", "in a year")]


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What it is for, e.g. grafana or deploy-script")
    expires = forms.ChoiceField(choices=EXPIRY_CHOICES, required=False)

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        if not name.isprintable():
            raise forms.ValidationError("Use printable characters only.")
        return name

    def expires_at(self):
        days = self.cleaned_data.get("expires")
        return timezone.now() + timedelta(days=int(days)) if days else None


@login_required
def token_list(request):
    form = TokenForm(request.POST or None)
    secret = created = None
    if request.method == "POST" and form.is_valid():
        created, secret = ApiToken.issue(request.user, form.cleaned_data["name"], form.expires_at())
        record("token.create", request=request, target=created.name, detail={"prefix": created.prefix})
        form = TokenForm()
    tokens = ApiToken.objects.filter(user=request.user)
    response = render(request, "api/tokens.html", {"form": form, "tokens": tokens, "secret": secret,
                                                   "created": created, "operator": is_operator(request.user)})
    if secret:
        response["Cache-Control"] = "no-store"  # the one page that holds the secret is kept by no cache
    return response


@login_required
def token_revoke(request, pk):
    token = get_object_or_404(ApiToken, pk=pk, user=request.user)
    if request.method == "POST":
        if token.revoke():
            record("token.revoke", request=request, target=token.name, detail={"prefix": token.prefix})
            messages.success(request, f"Token {token.name} ({token.prefix}…) revoked: it stops working now.")
        return redirect("api_tokens")
    return render(request, "api/token_confirm_revoke.html", {"token": token})
