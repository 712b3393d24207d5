"""Create (or reset) a viewer login: can look at every page, cannot act."""

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError

from nodes.permissions import VIEWERS_GROUP


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--password", required=True)

    def handle(self, *args, username, password, **options):
        if len(password) < 8:
            raise CommandError("password must have at least 8 characters")
        User = get_user_model()
        user, created = User.objects.get_or_create(username=username)
        if user.is_superuser:
            raise CommandError(f"{username} is a superuser; pick another name for a viewer")
        user.set_password(password)
        user.save()
        user.groups.set([Group.objects.get_or_create(name=VIEWERS_GROUP)[0]])
        self.stdout.write(f"Viewer {username!r} {'created' if created else 'updated'}.")
