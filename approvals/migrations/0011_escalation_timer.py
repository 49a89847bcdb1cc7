"""Escalation timers in a narrow table of their own (``EscalationTimer``), filled in for the
pending requests there are, and the request table's index on ``next_escalation_at`` gone, so
an escalation's update of a request changes no indexed column. On PostgreSQL the request table
also leaves 20 % of each page free, so that update can be a HOT update (the new row version
on its page, no index entry anywhere). Applies to pages written from now on;
``VACUUM FULL approvals_approvalrequest`` rewrites the old ones. Nothing more on SQLite.

Follows 0010_user_language."""

import django.db.models.deletion
from django.db import migrations, models

from orchestration.vendor import is_postgresql

BACKFILL = """
INSERT INTO approvals_escalationtimer (request_id, due_at)
SELECT id, next_escalation_at FROM approvals_approvalrequest
WHERE state = 'pending' AND next_escalation_at IS NOT NULL
"""


def set_fillfactor(apps, schema_editor):  # noqa: ANN001, ANN201
    if is_postgresql(schema_editor.connection):
        schema_editor.execute("ALTER TABLE approvals_approvalrequest SET (fillfactor = 80)")


def reset_fillfactor(apps, schema_editor):  # noqa: ANN001, ANN201
    if is_postgresql(schema_editor.connection):
        schema_editor.execute("ALTER TABLE approvals_approvalrequest RESET (fillfactor)")


class Migration(migrations.Migration):

    dependencies = [
        ('approvals', '0010_user_language'),
    ]

    operations = [
        migrations.CreateModel(
            name='EscalationTimer',
            fields=[
                ('request', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name='+', serialize=False, to='approvals.approvalrequest')),
                ('due_at', models.DateTimeField()),
            ],
        ),
        migrations.RemoveIndex(
            model_name='approvalrequest',
            name='approval_pending_escalation',
        ),
        migrations.AddIndex(
            model_name='escalationtimer',
            index=models.Index(fields=['due_at'], name='escalation_timer_due'),
        ),
        migrations.RunSQL(BACKFILL, migrations.RunSQL.noop),
        migrations.RunPython(set_fillfactor, reset_fillfactor),
    ]
