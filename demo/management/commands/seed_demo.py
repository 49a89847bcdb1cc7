"""Create the demo users and groups (idempotent)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token

USERS = [
    # username, superuser, groups
    ("admin", True, []),
    ("alice", False, ["employees"]),
    ("bob", False, ["employees", "managers"]),
    ("carol", False, ["employees", "finance"]),
]


DEMO_EXPENSES = [
    # key, requester, amount, description, receipt (a file name, or None)
    ("seed-expense-1", "alice", 42.5, "Taxi to the airport", "taxi-receipt.pdf"),
    ("seed-expense-2", "alice", 1850, "Conference ticket and hotel", "conference-invoice.pdf"),
    ("seed-expense-3", "carol", 320, "Team lunch", None),
    ("seed-expense-4", "alice", 89.9, "Books", None),
]

DEMO_VENDOR = {
    "vendor": "Acme Supplies",
    "country": "DE",
    "documents": [{"name": "vat-certificate"}, {"name": "bank-letter"}, {"name": "iso-9001"}],
    "contacts": [
        {"name": "Ann Lee", "email": "ann@acme.example"},
        {"name": "Ben Ortiz", "email": "ben@acme.example"},
    ],
}


def receipt_pdf(text: str) -> bytes:
    """A one-page PDF showing ``text`` (ASCII): a demo receipt any viewer opens."""
    safe = text.replace("\\", "").replace("(", "").replace(")", "")
    stream = f"BT /F1 14 Tf 72 720 Td ({safe}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def who_logs_in_where(base: str) -> str:
    """The banner: which demo user may use which door, read from the users themselves (only
    staff get into the admin; everyone has an inbox)."""
    User = get_user_model()  # noqa: N806
    found = User.objects.filter(username__in=[name for name, _, _ in USERS], is_active=True)
    people = [user for user in found.prefetch_related("groups").order_by("pk")]

    def with_groups(user: Any) -> str:
        groups = sorted(group.name for group in user.groups.all())
        return user.username + (f" ({', '.join(groups)})" if groups else "")

    everyone = ", ".join(with_groups(user) for user in people)
    staff = ", ".join(user.username for user in people if user.is_staff)
    return (
        "  Log in with the password from DEMO_PASSWORD (default 'signoff-demo'):\n"
        f"    inbox  {base}/inbox/  everyone: {everyone}\n"
        f"    admin  {base}/admin/  staff only: {staff or 'nobody'}\n"
        "  API token:  python manage.py drf_create_token alice\n"
        "  Start a workflow:\n"
        f"    curl -X POST {base}/api/v1/instances/ -H 'Authorization: Token <token>' \\\n"
        "      -H 'Content-Type: application/json' \\\n"
        '      -d \'{"workflow": "customer_onboarding", "input": {"customer": "ACME"}}\''
    )


class Command(BaseCommand):
    help = "Create demo users admin, alice, bob, carol and groups employees, managers, finance."

    def handle(self, *args: object, **options: object) -> None:
        User = get_user_model()  # noqa: N806
        password = settings.DEMO_PASSWORD
        for group in ("employees", "managers", "finance"):
            Group.objects.get_or_create(name=group)
        for username, superuser, groups in USERS:
            user, created = User.objects.get_or_create(
                username=username, defaults={"email": f"{username}@example.com"}
            )
            if created:
                user.set_password(password)
            user.is_staff = superuser
            user.is_superuser = superuser
            user.save()
            user.groups.add(*Group.objects.filter(name__in=groups))
            Token.objects.get_or_create(user=user)
        self._start_demo_instances(User)
        self.stdout.write(self.style.SUCCESS("Demo users ready."))
        self.stdout.write(who_logs_in_where(settings.SIGNOFF_BASE_URL))

    def _start_demo_instances(self, User) -> None:  # noqa: ANN001, N803
        """A few expenses and a vendor onboarding so the inbox is not empty on first run
        (idempotent by key)."""
        from orchestration.attachments import content_file
        from orchestration.engine import instance_start

        for key, requester, amount, description, receipt in DEMO_EXPENSES:
            files = (
                [content_file(receipt_pdf(f"Receipt: {description}, {amount} EUR"), receipt)]
                if receipt
                else []
            )
            instance, created = instance_start(
                workflow="expense_approval",
                input={
                    "amount": amount,
                    "currency": "EUR",
                    "description": description,
                    "requester": requester,
                },
                business_key=key.replace("seed-", "").upper(),
                idempotency_key=key,
                started_by=User.objects.get(username=requester),
                actor="seed_demo",
                files=files,
            )
            if created:
                self.stdout.write(f"  started expense_approval {instance.pk} ({description})")
        # A vendor onboarding: its document checks and contact invitations fan out, and its
        # child KYC workflow asks finance (carol) for a compliance approval.
        instance, created = instance_start(
            workflow="vendor_onboarding",
            input=DEMO_VENDOR,
            business_key="VENDOR-ACME",
            idempotency_key="seed-vendor-1",
            started_by=User.objects.get(username="bob"),
            actor="seed_demo",
        )
        if created:
            self.stdout.write(f"  started vendor_onboarding {instance.pk} (Acme Supplies)")
