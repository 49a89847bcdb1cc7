"""The operators' admin: find stuck or failed instances, read their history, act on them.

Everything shown is read-only: instances, steps and events change only through the engine's
services, and events are never added, changed or deleted here. Actions (bulk on a filtered
list, or on one instance or step) ask for confirmation, call one service each with the
operator as the actor, and report what succeeded and what was refused and why. Acting needs
``orchestration.operate_instance``; staff with view permissions only see, and get 403 when
they post an action anyway.

- :mod:`.shared`: the building blocks every admin of the project uses (read-only rows, strict
  actions, the confirmation page);
- :mod:`.instances`, :mod:`.instance_inlines`, :mod:`.instance_operations`: workflow instances,
  their steps and history, and the operator actions on them;
- :mod:`.batches`: batch operations (the instance list's batch actions, batch by filter);
- :mod:`.events`: every event, read-only;
- :mod:`.failures`: the "Failures" page (failed instances grouped) and "retry all in a group";
- :mod:`.periodic_tasks`: the sweepers' schedule (django-celery-beat);
- :mod:`.schedules`: workflow schedules (pause, resume) and their fire records;
- :mod:`.tokens`: the REST API's tokens, never shown whole (replaces DRF's token admin).
"""

from . import (  # noqa: F401 - they register the admins
    batches,
    events,
    failures,
    instances,
    periodic_tasks,
    schedules,
    tokens,
)
