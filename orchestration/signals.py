"""Lifecycle announcements, sent after commit. ``integrations`` listens; the engine never waits
on a listener."""

from django.dispatch import Signal

# Sent once per committed event with ``event`` (an ``orchestration.models.Event``).
event_committed = Signal()

# Sent on commit when a schedule's fire is missed or skipped (schedule_id, schedule_name, fire_time, reason).
schedule_missed = Signal()
