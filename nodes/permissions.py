"""Two roles: operators act, viewers look. Superusers and members of the "operators" group operate."""

from django.core.exceptions import PermissionDenied

OPERATORS_GROUP = "operators"
VIEWERS_GROUP = "viewers"


def is_operator(user):
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    cached = getattr(user, "_is_operator", None)
    if cached is None:
        cached = user.groups.filter(name=OPERATORS_GROUP).exists()
        user._is_operator = cached
    return cached


# Shown to the viewer on the 403 page (templates/403.html), so it says what to do rather than what failed.
VIEWER_REFUSAL = "Viewers can look but not change anything: ask an operator."


def require_operator(request):
    if not is_operator(request.user):
        raise PermissionDenied(VIEWER_REFUSAL)
