"""RabbitMQ as the broker: the whole server restarted in the middle of real work loses nothing
and doubles nothing. Quorum queues keep the queued messages across the restart; the messages
of steps that were running when it went down come back unacknowledged and the claim absorbs
them; doorbells that could not be sent meanwhile are rung again by the sweeper.

Marked ``rabbitmq``: it needs the suite's broker to be RabbitMQ, so it runs in `make test`'s
RabbitMQ step (SIGNOFF_TEST_BROKER_URL=amqp://...), never in the Redis run. A full restart
takes about 6 s here (scripts/rabbitmq.sh restart).
"""

from __future__ import annotations

import subprocess
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from django.conf import settings

from config.backends import is_amqp
from tests.conftest import WorkerProcess
from tests.server_faults import run_through, script

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.rabbitmq,
    pytest.mark.django_db(transaction=True),
]


def vhost() -> str:
    return unquote(urlsplit(settings.CELERY_BROKER_URL).path.lstrip("/")) or "/"


def test_the_broker_is_rabbitmq_with_quorum_queues_and_confirms(worker: WorkerProcess) -> None:
    from config.celery import app

    assert is_amqp(settings.CELERY_BROKER_URL), "run with SIGNOFF_TEST_BROKER_URL=amqp://..."
    assert app.conf.broker_transport_options == {"confirm_publish": True}
    assert app.amqp.queues["signoff"].queue_arguments == {"x-queue-type": "quorum"}
    assert app.conf.task_acks_late is True
    # What the server itself says about the queue the worker declared.
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost(), "name", "type", "durable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    assert "signoff\tquorum\ttrue" in listed, listed


def test_rabbitmq_restarted_mid_run_loses_nothing_and_doubles_nothing(
    worker: WorkerProcess, settings: Any
) -> None:
    assert is_amqp(settings.CELERY_BROKER_URL), "run with SIGNOFF_TEST_BROKER_URL=amqp://..."
    settings.SIGNOFF_DOORBELL_GRACE_SECONDS = 1

    def restart() -> None:
        script("rabbitmq.sh", "restart", vhost())

    counts = run_through(restart, timeout=120)
    assert counts["done_before_fault"] < counts["total"]
