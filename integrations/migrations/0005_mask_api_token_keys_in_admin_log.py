import re

from django.db import migrations

# The stock DRF token admin logged additions, changes and deletions with the whole key as the
# entry's text (and older DRF versions as its object id), which the admin shows (recent
# actions, history). Keep a prefix, as the token admin that replaced it does.
WHOLE_KEY = re.compile(r"^[0-9a-f]{40}$")


def mask_token_keys(apps, schema_editor):
    LogEntry = apps.get_model("admin", "LogEntry")
    ContentType = apps.get_model("contenttypes", "ContentType")
    types = ContentType.objects.filter(app_label="authtoken", model__in=["token", "tokenproxy"])
    entries = LogEntry.objects.filter(content_type__in=types).only("pk", "object_id", "object_repr")
    for entry in entries.iterator(chunk_size=1000):
        masked = {
            field: value[:6] + "…"
            for field in ("object_id", "object_repr")
            if WHOLE_KEY.match(value := getattr(entry, field) or "")
        }
        if masked:
            LogEntry.objects.filter(pk=entry.pk).update(**masked)


class Migration(migrations.Migration):

    dependencies = [
        ("integrations", "0004_outbox_link_ref"),
        ("admin", "0003_logentry_add_action_flag_choices"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.RunPython(mask_token_keys, migrations.RunPython.noop, elidable=True),
    ]
