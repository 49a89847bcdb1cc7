"""Lifecycle announcements, sent after commit. ``integrations`` listens; the engine never waits
on a listener."""

from django.dispatch import Signal

# Sent once per committed event with ``event`` (an ``orchestration.models.Event``).
event_committed = Signal()

# Sent after commit whenever a schedule's fire is recorded ``missed`` (past its catch-up
# window), ``skipped_overlap`` (its previous run still going) or ``failed`` (the engine refused
# the start), with ``schedule_id``, ``schedule_name``, ``fire_time`` (aware datetime) and
# ``reason`` (that outcome). Alert rules listen to it; the sender is the Schedule model.
schedule_missed = Signal()
