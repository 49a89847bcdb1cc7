# The W3C traceparent of the span that started an instance (orchestration.tracing). A column
# with a constant default: PostgreSQL 11+ adds it without rewriting the table.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("orchestration", "0015_fanout"),
    ]

    operations = [
        migrations.AddField(
            model_name="workflowinstance",
            name="trace_context",
            field=models.CharField(blank=True, default="", editable=False, max_length=55),
        ),
    ]
