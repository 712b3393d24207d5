"""Make sure an operator login exists: from MORPHEUS_ADMIN_USER / MORPHEUS_ADMIN_PASSWORD, or a generated
password printed once (and kept only as a hash)."""

import os
import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand

from nodes.permissions import OPERATORS_GROUP


class Command(BaseCommand):
    help = __doc__

    def handle(self, *args, **options):
        User = get_user_model()
        username = os.environ.get("MORPHEUS_ADMIN_USER", "admin")
        # An empty value (a blank line in an env file) means "not set", not an empty password.
        password = os.environ.get("MORPHEUS_ADMIN_PASSWORD") or None
        user = User.objects.filter(username=username).first()
        operators, _ = Group.objects.get_or_create(name=OPERATORS_GROUP)
        if user is not None:
            if password and not user.check_password(password):
                user.set_password(password)
                user.save(update_fields=["password"])
                self.stdout.write(f"Password of {username!r} set from MORPHEUS_ADMIN_PASSWORD.")
            else:
                self.stdout.write(f"Login {username!r} exists (password unchanged).")
            user.groups.add(operators)
            return
        generated = password is None
        password = password or secrets.token_urlsafe(12)
        user = User.objects.create_superuser(username=username, email="", password=password)
        user.groups.add(operators)
        if generated:
            self.stdout.write(self.style.SUCCESS(
                f"Created operator login {username!r} with password: {password}\n"
                "  (shown once; set MORPHEUS_ADMIN_PASSWORD to choose your own)"
            ))
        else:
            self.stdout.write(f"Created operator login {username!r} from MORPHEUS_ADMIN_PASSWORD.")
