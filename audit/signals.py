"""The actions Django reports through signals: logins and logouts, failed logins (the name tried, never the
password), users created, changed and deleted, and roles (groups, superuser) granted or taken away."""

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save
from django.dispatch import receiver
from django_otp import user_has_device

from audit.log import current_request, record
from audit.models import AuditEvent

User = get_user_model()
# Where accounts/views.py sends user_login_failed for a wrong second-factor code.
SECOND_FACTOR_SENDER = "accounts.views"
# The request attribute nodes/reauth.check_password sets: its caller records the outcome under its own action.
PASSWORD_CHECK = "audit_password_check"
_WATCHED = ("is_active", "is_superuser", "password")


@receiver(user_logged_in)
def _logged_in(sender, request, user, **kwargs):
    # With a second factor the password was only the first step: login.code records the second.
    record("login", request=request, user=user, detail={"code": "asked next"} if user_has_device(user) else None)


@receiver(user_logged_out)
def _logged_out(sender, request, user, **kwargs):
    if user is not None:
        record("logout", request=request, user=user)


@receiver(user_login_failed)
def _login_failed(sender, credentials, request=None, **kwargs):
    if request is not None and getattr(request, PASSWORD_CHECK, False):
        return
    locked_out = bool(getattr(request, "axes_locked_out", False))
    # Only the name: Django has already masked the password, and nothing else of `credentials` is kept.
    username = str(credentials.get(User.USERNAME_FIELD) or credentials.get("username") or "")
    record("login.code" if sender == SECOND_FACTOR_SENDER else "login", request=request, user=None,
           username=username or "?", outcome=AuditEvent.REFUSED if locked_out else AuditEvent.FAILED,
           detail={"locked_out": True} if locked_out else None)


def _by():
    """The request that made the change (an operator in the admin), or None for a command or a task."""
    return current_request.get()


@receiver(pre_save, sender=User)
def _remember_user(sender, instance, update_fields=None, raw=False, **kwargs):
    # A login saves only last_login: no read for it.
    if raw or instance.pk is None or (update_fields is not None and not set(update_fields) & set(_WATCHED)):
        return
    instance._audit_before = User.objects.filter(pk=instance.pk).values(*_WATCHED).first()


@receiver(post_save, sender=User)
def _user_saved(sender, instance, created, raw=False, **kwargs):
    if raw:
        return
    request, name = _by(), instance.get_username()
    if created:
        record("user.create", request=request, target=name,
               detail={"superuser": True} if instance.is_superuser else None)
        return
    before = getattr(instance, "_audit_before", None)
    instance._audit_before = None
    if not before:
        return
    if before["is_active"] != instance.is_active:
        record("user.activate" if instance.is_active else "user.deactivate", request=request, target=name)
    if before["is_superuser"] != instance.is_superuser:
        record("role.change", request=request, target=name, detail={"superuser": instance.is_superuser})
    if before["password"] != instance.password:
        record("user.password", request=request, target=name)  # that it changed; never the hash


@receiver(post_delete, sender=User)
def _user_deleted(sender, instance, **kwargs):
    record("user.delete", request=_by(), target=instance.get_username())


@receiver(m2m_changed, sender=User.groups.through)
def _groups_changed(sender, instance, action, reverse, pk_set, **kwargs):
    """A role is a group (nodes/permissions.py): one event per user whose groups changed, naming the groups."""
    if action == "pre_clear":
        instance._audit_cleared = (list(instance.groups.values_list("name", flat=True)) if not reverse
                                   else list(instance.user_set.values_list("username", flat=True)))
        return
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    key = "added" if action == "post_add" else "removed"
    request = _by()
    if not reverse:  # user.groups.add(...) / remove / set / clear
        groups = (getattr(instance, "_audit_cleared", []) if action == "post_clear"
                  else sorted(Group.objects.filter(pk__in=pk_set).values_list("name", flat=True)))
        if groups:
            record("role.change", request=request, target=instance.get_username(), detail={key: groups})
        return
    usernames = (getattr(instance, "_audit_cleared", []) if action == "post_clear"
                 else User.objects.filter(pk__in=pk_set).values_list("username", flat=True))
    for username in sorted(usernames):  # group.user_set.add(...): the group is the instance
        record("role.change", request=request, target=username, detail={key: [instance.name]})
