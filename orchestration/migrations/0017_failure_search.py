"""Failures grouped and instance search (issue 16, items 5 and 6).

- ``FailureGroupProxy``: a proxy of the instance (no table) that gives the admin's "Failures"
  page its place in the menu; it has no permissions of its own (the page asks the instance's).
- On PostgreSQL, the indexes the search uses: a GIN ``jsonb_path_ops`` index on the input
  (``input @? '<jsonpath>'``), and trigram indexes (``pg_trgm``, a trusted extension a
  database owner may create) on the error message of instances and of steps
  (``... ->> 'message' ILIKE '%text%'``), partial on rows that have an error. SQLite scans.
"""

from django.db import migrations

from orchestration.vendor import is_postgresql

INDEXES = [
    (
        "instance_input_path_gin",
        "orchestration_workflowinstance USING gin (input jsonb_path_ops)",
    ),
    (
        "instance_error_trgm",
        "orchestration_workflowinstance USING gin ((error ->> 'message') gin_trgm_ops) "
        "WHERE error IS NOT NULL",
    ),
    (
        "steprun_error_trgm",
        "orchestration_steprun USING gin ((error ->> 'message') gin_trgm_ops) "
        "WHERE error IS NOT NULL",
    ),
]


def create_indexes(apps, schema_editor):  # noqa: ANN001, ANN201
    if is_postgresql(schema_editor.connection):
        schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for name, target in INDEXES:
            schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {target}")


def drop_indexes(apps, schema_editor):  # noqa: ANN001, ANN201
    if is_postgresql(schema_editor.connection):
        for name, _ in INDEXES:
            schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [("orchestration", "0016_trace_context")]

    operations = [
        migrations.CreateModel(
            name="FailureGroupProxy",
            fields=[],
            options={
                "verbose_name": "failure group",
                "verbose_name_plural": "failures",
                "proxy": True,
                "default_permissions": (),
                "indexes": [],
                "constraints": [],
            },
            bases=("orchestration.workflowinstance",),
        ),
        migrations.RunPython(create_indexes, drop_indexes),
    ]
