from django.core.management.base import BaseCommand

from orchestration.periodic import install_periodic_tasks, wanted_periodic_tasks


class Command(BaseCommand):
    help = "Install the sweepers as django-celery-beat periodic tasks (idempotent)."

    def handle(self, *args: object, **options: object) -> None:
        created = install_periodic_tasks()
        total = len(wanted_periodic_tasks())
        self.stdout.write(f"{total} periodic tasks in place ({created} created).")
