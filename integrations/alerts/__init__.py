"""Alerts: rules operators configure in the admin (instance failed, instance stuck, approval
overdue, schedule missed, compensation failed), each firing at most once per subject until the
subject recovers, delivered by mail and by signed webhook, with a resolved notice.

- :mod:`.conditions` — the registry of conditions (what fires, what recovered) and the
  engine's built-in ones; other apps register theirs (approvals: ``approval_overdue``);
- :mod:`.rules` — the checks a rule must pass;
- :mod:`.delivery` — the notices: mail through the outbox, signed webhook POSTs;
- :mod:`.services` — fire, resolve, the event receivers and the ``sweep_alerts`` sweeper.
"""
