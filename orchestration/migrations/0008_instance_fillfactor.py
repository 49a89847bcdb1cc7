"""Leave 15 % of each instance page free, so the row's updates on every engine transaction
(``last_seq``, ``updated_at``; no index covers them) can be HOT updates on PostgreSQL: the new
row version stays on its page and none of the table's nine indexes gets a new entry. Applies
to pages written from now on; ``VACUUM FULL orchestration_workflowinstance`` rewrites the old
ones. Nothing to do on SQLite."""

from django.db import migrations

from orchestration.vendor import is_postgresql


def set_fillfactor(apps, schema_editor):  # noqa: ANN001, ANN201
    if is_postgresql(schema_editor.connection):
        schema_editor.execute("ALTER TABLE orchestration_workflowinstance SET (fillfactor = 85)")


def reset_fillfactor(apps, schema_editor):  # noqa: ANN001, ANN201
    if is_postgresql(schema_editor.connection):
        schema_editor.execute("ALTER TABLE orchestration_workflowinstance RESET (fillfactor)")


class Migration(migrations.Migration):
    dependencies = [("orchestration", "0007_event_instance_index_covered")]

    operations = [migrations.RunPython(set_fillfactor, reset_fillfactor)]
