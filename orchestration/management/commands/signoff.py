"""`manage.py signoff <subcommand>`: operate workflows from a terminal or a script.

Exit codes: 0 done, 1 refused (a business error: unknown workflow, wrong state...), 2 usage.
Output is JSON for `start` and `status` (so scripts can parse it) and plain lines otherwise.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from orchestration import engine, jsonsafe, selectors, sweepers
from orchestration.errors import SignoffError
from orchestration.models import StepRun, WorkflowInstance

ACTOR = "cli"


class Refused(CommandError):
    def __init__(self, message: str) -> None:
        super().__init__(message, returncode=1)


class Command(BaseCommand):
    help = "Start, inspect and operate workflow instances."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, parser_class=type(parser))
        start = sub.add_parser("start", help="start an instance; prints it as JSON")
        start.add_argument("workflow")
        start.add_argument("--input", default="{}", help="JSON object")
        start.add_argument("--business-key", default="")
        start.add_argument("--idempotency-key", default=None)
        start.add_argument("--version", type=int, default=None)
        for name, text in [
            ("status", "print an instance with its steps as JSON"),
            ("retry", "retry a failed instance from its failed steps"),
            ("cancel", "cancel an instance"),
            ("pause", "pause a running instance"),
            ("unpause", "unpause an instance"),
            ("resume", "ring the doorbells of a stuck instance now"),
            ("history", "print an instance's events"),
        ]:
            p = sub.add_parser(name, help=text)
            p.add_argument("instance_id")
        sub.add_parser("stuck", help="list stuck instances")
        rotate = sub.add_parser("rotate-keys", help="re-encrypt sealed fields under the newest key")
        rotate.add_argument("--batch", type=int, default=500)
        erase = sub.add_parser("erase", help="erase one subject's sensitive data (GDPR)")
        erase.add_argument("--business-key", required=True)
        erase.add_argument("--reason", default="erasure request")
        sub.add_parser("sweep", help="run the engine sweepers once")
        orphans = sub.add_parser(
            "file-orphans",
            help="list (or --delete) stored file bytes with no attachment row, left by a "
            "process killed between writing them and committing",
        )
        orphans.add_argument("--older-than-hours", type=float, default=24.0)
        orphans.add_argument("--delete", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"].replace("-", "_")
        try:
            getattr(self, f"do_{action}")(options)
        except SignoffError as exc:
            raise Refused(f"{exc.code}: {exc.message}") from exc

    def _json(self, data: Any) -> None:
        self.stdout.write(json.dumps(data, indent=2, default=str))

    def _describe(self, instance: WorkflowInstance) -> dict[str, Any]:
        steps = StepRun.objects.filter(instance=instance).order_by("position")
        return {
            "id": str(instance.pk),
            "workflow": instance.workflow,
            "version": instance.version,
            "state": instance.state,
            "paused": instance.paused_at is not None,
            "business_key": instance.business_key,
            "input": instance.input,
            "output": instance.output,
            "error": instance.error,
            "created_at": instance.created_at,
            "finished_at": instance.finished_at,
            "steps": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "state": s.state,
                    "attempt": s.attempt,
                    "error": (s.error or {}).get("message"),
                }
                for s in steps
            ],
        }

    def _instance(self, options: dict[str, Any]) -> WorkflowInstance:
        try:
            pk = uuid.UUID(options["instance_id"])
        except ValueError:
            raise Refused("not_found: instance ids are UUIDs") from None
        instance = WorkflowInstance.objects.filter(pk=pk).first()
        if instance is None:
            raise Refused("not_found: instance not found")
        return instance

    def do_start(self, options: dict[str, Any]) -> None:
        try:
            data = jsonsafe.loads(options["input"])
        except jsonsafe.JSONInputError as exc:
            raise Refused(f"invalid_json: --input: {exc}") from exc
        instance, created = engine.instance_start(
            workflow=options["workflow"],
            input=data,
            business_key=options["business_key"],
            idempotency_key=options["idempotency_key"],
            version=options["version"],
            actor=ACTOR,
        )
        self._json({**self._describe(instance), "created": created})

    def do_status(self, options: dict[str, Any]) -> None:
        self._json(self._describe(self._instance(options)))

    def do_history(self, options: dict[str, Any]) -> None:
        instance = self._instance(options)
        for e in selectors.instance_history(instance=instance):
            step = f" {e.step}#{e.attempt}" if e.step else ""
            self.stdout.write(f"{e.seq:>4} {e.at:%Y-%m-%d %H:%M:%S} {e.type}{step} ({e.actor})")

    def do_retry(self, options: dict[str, Any]) -> None:
        instance = engine.instance_retry(instance_id=self._instance(options).pk, actor=ACTOR)
        self.stdout.write(f"{instance.pk} {instance.state}")

    def do_cancel(self, options: dict[str, Any]) -> None:
        instance = engine.instance_cancel(instance_id=self._instance(options).pk, actor=ACTOR)
        self.stdout.write(f"{instance.pk} {instance.state}")

    def do_pause(self, options: dict[str, Any]) -> None:
        instance = engine.instance_pause(instance_id=self._instance(options).pk, actor=ACTOR)
        self.stdout.write(f"{instance.pk} paused")

    def do_unpause(self, options: dict[str, Any]) -> None:
        instance = engine.instance_unpause(instance_id=self._instance(options).pk, actor=ACTOR)
        self.stdout.write(f"{instance.pk} unpaused")

    def do_resume(self, options: dict[str, Any]) -> None:
        rung = engine.instance_resume(instance_id=self._instance(options).pk, actor=ACTOR)
        self.stdout.write(f"rang {len(rung)} step(s): {', '.join(rung) or '-'}")

    def do_stuck(self, options: dict[str, Any]) -> None:
        rows = list(selectors.stuck_instances()[:500])
        for i in rows:
            self.stdout.write(
                f"{i.pk} {i.workflow} v{i.version} {i.state} "
                f"updated {i.updated_at:%Y-%m-%d %H:%M:%S}"
            )
        self.stderr.write(f"{len(rows)} stuck instance(s)")

    def do_sweep(self, options: dict[str, Any]) -> None:
        self._json(sweepers.sweep_all())

    def do_rotate_keys(self, options: dict[str, Any]) -> None:
        from orchestration.retention import rotate_keys
        from orchestration.sealing import SealError

        try:
            changed = rotate_keys(batch=options["batch"])
        except SealError as exc:
            raise Refused(f"seal_error: {exc}") from exc
        self.stdout.write(f"re-encrypted {changed} row(s) under the newest key")

    def do_erase(self, options: dict[str, Any]) -> None:
        from orchestration.retention import erase_business_key

        key = options["business_key"].strip()
        if not key:
            raise Refused("invalid: --business-key must not be empty")
        instances, fields = erase_business_key(
            business_key=key, actor=ACTOR, reason=options["reason"]
        )
        if not instances:
            raise Refused(f"not_found: no instance has business key {key!r}")
        self.stdout.write(f"erased {fields} sensitive field(s) in {instances} instance(s)")

    def do_file_orphans(self, options: dict[str, Any]) -> None:
        from orchestration.attachments import sweep_orphans

        keys = sweep_orphans(
            older_than_seconds=int(options["older_than_hours"] * 3600), delete=options["delete"]
        )
        for key in keys:
            self.stdout.write(key)
        verb = "deleted" if options["delete"] else "found"
        self.stderr.write(f"{verb} {len(keys)} orphaned file(s)")
