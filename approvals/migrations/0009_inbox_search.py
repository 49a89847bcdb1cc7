"""The inbox's text search and columns: ``search_text`` (title, business key, requester and
shown field values, lower case) and ``columns`` (the values of the fields a step shows as
columns), filled in for the requests already there. On PostgreSQL a trigram index
(``pg_trgm``, a trusted extension a database owner may create) serves ``LIKE '%term%'`` over
the search text; SQLite scans."""

from django.db import migrations, models

from orchestration.vendor import is_postgresql

BATCH = 2000


def backfill(apps, schema_editor):  # noqa: ANN001, ANN201
    from approvals.models import search_document

    ApprovalRequest = apps.get_model("approvals", "ApprovalRequest")  # noqa: N806
    User = apps.get_model("auth", "User")  # noqa: N806
    last = 0
    while True:
        rows = list(ApprovalRequest.objects.filter(pk__gt=last).order_by("pk")[:BATCH])
        if not rows:
            return
        names = dict(
            User.objects.filter(pk__in={r.requester_id for r in rows if r.requester_id})
            .values_list("pk", "username")
        )
        for row in rows:
            row.search_text = search_document(
                row.title, row.business_key, names.get(row.requester_id, ""), row.fields
            )
        ApprovalRequest.objects.bulk_update(rows, ["search_text"])
        last = rows[-1].pk


def trigram_index(apps, schema_editor):  # noqa: ANN001, ANN201
    if is_postgresql(schema_editor.connection):
        schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        schema_editor.execute(
            "CREATE INDEX IF NOT EXISTS approval_search_trgm ON approvals_approvalrequest "
            "USING gin (search_text gin_trgm_ops)"
        )


def drop_trigram_index(apps, schema_editor):  # noqa: ANN001, ANN201
    if is_postgresql(schema_editor.connection):
        schema_editor.execute("DROP INDEX IF EXISTS approval_search_trgm")


class Migration(migrations.Migration):
    dependencies = [("approvals", "0008_mail_preferences")]

    operations = [
        migrations.AddField(
            model_name="approvalrequest",
            name="search_text",
            field=models.TextField(blank=True, default="", editable=False),
        ),
        migrations.AddField(
            model_name="approvalrequest",
            name="columns",
            field=models.JSONField(blank=True, default=dict, editable=False),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
        migrations.RunPython(trigram_index, drop_trigram_index),
    ]
