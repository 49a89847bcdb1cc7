"""REST API for workflows and instances: one view per operation, each calling one service.

Views validate input with a serializer, call one engine service and answer with the
instance as a selector reads it. Business errors (:mod:`orchestration.errors`) become HTTP in
one place, :func:`orchestration.api.errors.exception_handler`.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from orchestration import actors, attachments, engine, search, selectors
from orchestration.definitions import registry
from orchestration.errors import Conflict, InvalidInput, NotAllowed, NotFound
from orchestration.models import InstanceState
from orchestration.replica import replica_reads

from .pagination import EventPagination, InstancePagination
from .parsers import JSONParser, multipart_body
from .serializers import (
    AttachmentSerializer,
    BatchStartResponseSerializer,
    BatchStartSerializer,
    CancelInstanceSerializer,
    ErrorSerializer,
    EventSerializer,
    InstanceSerializer,
    SignalSerializer,
    StartInstanceMultipartSerializer,
    StartInstanceSerializer,
    WorkflowSerializer,
)

IDEMPOTENCY_HEADER = "Idempotency-Key"


def actor_of(request: Request) -> str:
    return actors.actor_of(request.user)


def _errors(*codes: int) -> dict[int, OpenApiResponse]:
    """Schema of the error responses an operation may give; every one may give 401."""
    described = {
        400: "Invalid input: detail, code and, for field errors, fields.",
        403: "The caller may see the instance but not act on it: only its starter and holders "
        "of orchestration.operate_instance may (code permission_denied).",
        404: "No such instance, or not one the caller may see.",
        409: "The instance's state (or an Idempotency-Key) does not allow this.",
        413: "Request body over SIGNOFF_MAX_REQUEST_BYTES (a multipart upload: over "
        "SIGNOFF_MAX_UPLOAD_BYTES).",
    }
    codes = (*codes, 401)
    described[401] = "Not authenticated."
    return {code: OpenApiResponse(ErrorSerializer, description=described[code]) for code in codes}


# DRF's cursor pagination answers a cursor it cannot read with 404 (detail "Invalid cursor").
INVALID_CURSOR = "A cursor that is not one the API gave (tampered, truncated): Invalid cursor."

INSTANCE_ID = OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH)


class ApiView(APIView):
    # JSON only, parsed safely (no docstring: drf-spectacular would show it on every view).
    parser_classes = [JSONParser]


class WorkflowListView(ApiView):
    @extend_schema(
        summary="Registered workflows",
        tags=["workflows"],
        responses={200: WorkflowSerializer(many=True), **_errors()},
    )
    def get(self, request: Request) -> Response:
        return Response([wf.describe() for wf in registry.all()])


class InstanceListView(ApiView):
    # Read by drf-spectacular too, which then documents the paginated envelope.
    pagination_class = InstancePagination
    # A start may carry files: multipart bodies up to SIGNOFF_MAX_UPLOAD_BYTES (middleware).
    parser_classes = [JSONParser, MultiPartParser]
    accepts_uploads = True

    @extend_schema(
        summary="List instances",
        tags=["instances"],
        description="The caller's instances (every instance for staff and operators), "
        "newest first, cursor-paginated.",
        parameters=[
            OpenApiParameter("workflow", str, description="Workflow name."),
            OpenApiParameter("state", str, enum=InstanceState.values),
            OpenApiParameter("business_key", str),
            OpenApiParameter(
                "schedule", int, description="Only instances this schedule started (its id)."
            ),
            OpenApiParameter(
                "error",
                str,
                description="Error text (3 to 200 characters, case-insensitive, anywhere) in "
                "the instance's error message or one of its steps' (a retrying step's too).",
            ),
            OpenApiParameter(
                "input.<path>",
                str,
                description="Search an input field by its path (dot-separated keys; a number "
                "is an array index): `input.customer.country=DE` (equals; a number, true, "
                "false or null also matches the JSON value). An operator in brackets: "
                "`input.amount[gte]=100` (gt, gte, lt, lte: numbers), "
                "`input.customer.name[contains]=acme` (case-insensitive), "
                "`input.customer.vat[exists]=true`. At most 5, combined with AND. A sealed "
                "(sensitive) field answers 400 `sealed_field`; a bad path, operator or value "
                "400 `invalid_search`.",
            ),
        ],
        responses={
            200: InstanceSerializer(many=True),
            **_errors(400),
            404: OpenApiResponse(ErrorSerializer, description=INVALID_CURSOR),
        },
    )
    def get(self, request: Request) -> Response:
        qs = selectors.instance_list(
            user=request.user,
            workflow=request.query_params.get("workflow"),
            state=request.query_params.get("state"),
            business_key=request.query_params.get("business_key"),
            schedule=request.query_params.get("schedule"),
            search=search.parse_params(request.query_params),
        )
        paginator = self.pagination_class()
        page = selectors.attach_children(paginator.paginate_queryset(qs, request, view=self))
        context = {"map_counts": selectors.map_item_counts_for(page)}
        data = InstanceSerializer(page, many=True, context=context).data
        return paginator.get_paginated_response(data)

    @extend_schema(
        summary="Start an instance",
        tags=["instances"],
        description="With an Idempotency-Key header: the same key and the same body answer "
        "200 with the first instance; the same key with another body answers 409. Keys are "
        "the caller's own: unique per workflow and caller.\n\n"
        "With files: a multipart/form-data body (fields workflow, input as a JSON string, "
        "business_key, version, and the files, each under `files`) for a workflow that "
        "declares an `attachments` input field: the files are checked (type read from their "
        "bytes, size, count; a refused file is a 400 naming it, and nothing is stored), "
        "stored with the instance, and listed in that field as "
        '`[{"id", "name", "content_type", "size"}]` before the input is validated. A repeat '
        "with the same Idempotency-Key and the same files answers 200 and stores nothing.",
        request={
            "application/json": StartInstanceSerializer,
            "multipart/form-data": StartInstanceMultipartSerializer,
        },
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_HEADER,
                str,
                OpenApiParameter.HEADER,
                description=f"1 to {engine.MAX_KEY_LENGTH} characters",
            )
        ],
        responses={
            201: InstanceSerializer,
            200: InstanceSerializer,
            **_errors(400, 409, 413),
            403: OpenApiResponse(
                ErrorSerializer,
                description="The input names another requester (the workflow's "
                "requester_input) and the caller lacks orchestration.start_on_behalf "
                "(code on_behalf_not_allowed).",
            ),
        },
    )
    def post(self, request: Request) -> Response:
        if request.content_type.startswith("multipart/form-data"):
            body, files = _multipart_start(request)
        else:
            body, files = request.data, []
        serializer = StartInstanceSerializer(data=body)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        key = _idempotency_key(request)
        try:
            instance, created = engine.instance_start(
                workflow=data["workflow"],
                input=data["input"],
                business_key=data["business_key"],
                version=data["version"],
                idempotency_key=key,
                started_by=request.user,
                actor=actor_of(request),
                files=files,
            )
        except Conflict as exc:
            if exc.code == "idempotency_conflict" and key is not None:
                raise _key_conflict(request, data["workflow"], key) from None
            raise
        if created:
            # The caller just started it, so may see it: answer with the rows the engine wrote
            # (no query) rather than reading them back through the visibility check: two
            # permission queries, the instance and its steps (bench/api.py: 4 of a start's 8
            # queries and a third of the web worker's time).
            data = InstanceSerializer(instance, context={"as_started": True}).data
            return Response(data, status=status.HTTP_201_CREATED)
        try:
            instance = selectors.instance_get(user=request.user, instance_id=instance.pk)
        except NotFound:
            # A repeat of someone else's request: the key is taken, and that is all we say.
            raise _key_conflict(request, data["workflow"], key or "") from None
        return Response(InstanceSerializer(instance).data, status=status.HTTP_200_OK)


class InstanceBatchStartView(ApiView):
    @extend_schema(
        summary="Start many instances",
        tags=["instances"],
        description='Up to 1,000 start requests in one body, `{"items": [...]}`, each '
        "item a start body (workflow, input, business_key, version) with its own optional "
        "`idempotency_key` (the Idempotency-Key header of a single start). The answer is 207 "
        "Multi-Status with one result per item, in order: 201 started, 200 a repeat of an "
        "earlier start (same key, same body: that instance), 409 the key was used with another "
        "body, 400 an invalid item, 403 an item naming another requester. A bad item does not "
        "stop the others; the new instances are written in one transaction (all or none) and "
        "their steps start after it commits.\n\n"
        "The whole batch is refused (400, nothing written) when `items` is not a list, is "
        "empty or longer than 1,000, or gives one idempotency_key twice for one workflow "
        "(code duplicate_idempotency_key). The body counts against SIGNOFF_MAX_REQUEST_BYTES "
        "(413 over it): split large batches. Same permission as a single start.",
        request=BatchStartSerializer,
        responses={
            207: BatchStartResponseSerializer,
            **_errors(400, 413),
        },
    )
    def post(self, request: Request) -> Response:
        body = request.data
        if not isinstance(body, dict) or set(body) != {"items"}:
            raise InvalidInput('the body must be {"items": [...]}', code="invalid")
        results = engine.instances_start_batch(
            items=body["items"], started_by=request.user, actor=actor_of(request)
        )
        return Response(
            {
                "results": [_batch_result(r) for r in results],
                "started": sum(r.status == 201 for r in results),
            },
            status=status.HTTP_207_MULTI_STATUS,
        )


_DATETIME = serializers.DateTimeField()


def _batch_result(result: engine.BatchItemResult) -> dict[str, Any]:
    instance, error = result.instance, result.error
    return {
        "index": result.index,
        "status": result.status,
        "instance": None
        if instance is None
        else {
            "id": str(instance.pk),
            "workflow": instance.workflow,
            "version": instance.version,
            "state": instance.state,
            "business_key": instance.business_key,
            "created_at": _DATETIME.to_representation(instance.created_at),
        },
        "error": None
        if error is None
        else {
            "detail": error.message,
            "code": error.code,
            **({"fields": error.errors} if error.errors is not None else {}),
        },
    }


START_FORM_FIELDS = {"workflow", "input", "business_key", "version"}


def _multipart_start(request: Request) -> tuple[dict[str, Any], list[Any]]:
    """The start's fields and files from a multipart form (:func:`parsers.multipart_body`),
    ``version`` an integer."""
    body, files = multipart_body(request, fields=START_FORM_FIELDS, json_fields={"input"})
    if "version" in body:
        text = body["version"].strip()
        if not text.isascii() or not text.isdigit() or len(text) > 9:
            raise serializers.ValidationError({"version": ["A valid integer is required."]})
        body["version"] = int(text)
    return body, files


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not key.strip() or len(key) > engine.MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidInput(
            f"{IDEMPOTENCY_HEADER} must be 1 to {engine.MAX_KEY_LENGTH} printable characters",
            code="invalid_idempotency_key",
        )
    return key


def _key_conflict(request: Request, workflow: str, key: str) -> Conflict:
    """409 for a reused key, naming the first instance only to a caller who may see it."""
    mine = selectors.instance_with_idempotency_key(user=request.user, workflow=workflow, key=key)
    where = f" (instance {mine.pk})" if mine is not None else ""
    return Conflict(
        f"{IDEMPOTENCY_HEADER} {key!r} was already used with another request{where}",
        code="idempotency_conflict",
    )


class InstanceDetailView(ApiView):
    @extend_schema(
        summary="One instance with its steps",
        tags=["instances"],
        description="Visible to its starter, staff, holders of orchestration.operate_instance, "
        "and read-only to whoever has a part in one of its approval requests (current and "
        "past assignees, their delegates, deciders, the requester): for those, sealed fields "
        "stay masked whatever their permissions.",
        parameters=[INSTANCE_ID],
        responses={200: InstanceSerializer, **_errors(404)},
    )
    @replica_reads
    def get(self, request: Request, pk: str) -> Response:
        instance = selectors.instance_get(user=request.user, instance_id=pk)
        reveal = selectors.may_reveal(request.user, instance)
        return Response(InstanceSerializer(instance, context={"reveal": reveal}).data)


class InstanceHistoryView(ApiView):
    pagination_class = EventPagination

    @extend_schema(
        summary="The instance's events in order",
        tags=["instances"],
        description="Oldest first; seq counts from 1 without gaps. Cursor-paginated. Readable "
        "by whoever may read the instance (see the instance's detail). Comments on approval "
        "requests appear as approval_commented events without their text (read it at "
        "/api/v1/approvals/{id}/comments/).",
        parameters=[INSTANCE_ID],
        responses={
            200: EventSerializer(many=True),
            **_errors(400),
            404: OpenApiResponse(
                ErrorSerializer,
                description=f"No such instance, or not one the caller may see. {INVALID_CURSOR}",
            ),
        },
    )
    @replica_reads
    def get(self, request: Request, pk: str) -> Response:
        instance = selectors.instance_get(user=request.user, instance_id=pk)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(
            selectors.instance_history(instance=instance), request, view=self
        )
        return paginator.get_paginated_response(EventSerializer(page, many=True).data)


class InstanceCancelView(ApiView):
    @extend_schema(
        summary="Cancel an instance",
        tags=["instances"],
        description="Cancels a pending, running or failed instance and its open "
        "steps. 409 when it already finished. For its starter and holders of "
        "orchestration.operate_instance.",
        parameters=[INSTANCE_ID],
        request=CancelInstanceSerializer,
        responses={200: InstanceSerializer, **_errors(400, 403, 404, 409, 413)},
    )
    def post(self, request: Request, pk: str) -> Response:
        instance = selectors.instance_for_action(user=request.user, instance_id=pk)
        serializer = CancelInstanceSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        engine.instance_cancel(
            instance_id=instance.pk,
            actor=actor_of(request),
            reason=serializer.validated_data["reason"],
        )
        instance = selectors.instance_get(user=request.user, instance_id=instance.pk)
        return Response(InstanceSerializer(instance).data)


class InstanceRetryView(ApiView):
    @extend_schema(
        summary="Retry a failed instance from its failed steps",
        tags=["instances"],
        description="409 unless the instance is failed. For its starter and holders of "
        "orchestration.operate_instance.",
        parameters=[INSTANCE_ID],
        request=None,
        responses={200: InstanceSerializer, **_errors(403, 404, 409)},
    )
    def post(self, request: Request, pk: str) -> Response:
        instance = selectors.instance_for_action(user=request.user, instance_id=pk)
        engine.instance_retry(instance_id=instance.pk, actor=actor_of(request))
        instance = selectors.instance_get(user=request.user, instance_id=instance.pk)
        return Response(InstanceSerializer(instance).data)


class InstanceSignalView(ApiView):
    # Either an authenticated user who may act on the instance (its starter, or
    # operate_instance), or an HMAC signature with the workflow's signal secret (for external
    # systems without a user token).
    permission_classes: list = []

    @extend_schema(
        summary="Deliver a signal (external callback) to an instance",
        tags=["instances"],
        description="The JSON body is the signal's payload. The step waiting for this signal "
        "completes with it; a signal that arrives before its step is kept and consumed when the "
        "step is reached. Idempotency-Key makes a repeat a no-op (200). Authenticate with a "
        "token/session, or sign with the workflow's secret: header X-Signoff-Signature: "
        "t=<unix>,v2=<hex HMAC-SHA256(secret, '<t>\\n<METHOD>\\n<path>\\n<Idempotency-Key or "
        "empty>\\n<raw body>')>, where path is the request path from /api/v1/ on; valid for 5 "
        "minutes. A signed request without Idempotency-Key is applied once: repeating it is a "
        "no-op (200). v1 signatures (body only) are refused (unsupported_signature).",
        parameters=[
            INSTANCE_ID,
            OpenApiParameter("name", str, OpenApiParameter.PATH),
            OpenApiParameter(IDEMPOTENCY_HEADER, str, OpenApiParameter.HEADER),
            OpenApiParameter("X-Signoff-Signature", str, OpenApiParameter.HEADER),
        ],
        request=OpenApiTypes.OBJECT,
        responses={
            202: SignalSerializer,
            200: SignalSerializer,
            403: OpenApiResponse(
                ErrorSerializer,
                description="Bad, stale or v1 signature (bad_signature, stale_signature, "
                "unsupported_signature), or signed signals not enabled (signatures_disabled); "
                "or a caller who may see the instance but not act on it (not its starter, no "
                "orchestration.operate_instance).",
            ),
            **_errors(400, 404, 409, 413),
        },
    )
    def post(self, request: Request, pk: str, name: str) -> Response:
        from rest_framework.exceptions import NotAuthenticated

        from orchestration import waits

        raw = request._request.body
        signature = request.headers.get("X-Signoff-Signature")
        idempotency_key = request.headers.get(IDEMPOTENCY_HEADER)
        if signature is not None:
            instance = selectors.instance_for_signature(instance_id=pk)
            secret = waits.signal_secret(instance.workflow)
            if not secret:
                raise NotAllowed(
                    "signed signals are not enabled for this workflow", code="signatures_disabled"
                )
            # Checked on the raw bytes before parsing; binds method, path (instance and signal
            # name), Idempotency-Key and body, so a captured request works nowhere else.
            digest = waits.verify_signature(
                secret,
                signature,
                method=request.method,
                path=request._request.path_info,
                idempotency_key=idempotency_key or "",
                body=raw,
            )
            if idempotency_key is None:
                # Replaying the same signed request inside its window applies nothing twice.
                idempotency_key = f"sig:{digest}"
            actor, source = f"webhook:{instance.workflow}", "webhook"
        elif request.user and request.user.is_authenticated:
            instance = selectors.instance_for_action(user=request.user, instance_id=pk)
            actor, source = actor_of(request), "api"
        else:
            raise NotAuthenticated()
        payload = request.data if raw.strip() else {}
        if not isinstance(payload, dict):
            raise InvalidInput("the signal payload must be a JSON object", code="invalid_payload")
        signal, applied = waits.signal_send(
            instance_id=instance.pk,
            name=name,
            payload=payload,
            actor=actor,
            source=source,
            idempotency_key=idempotency_key,
        )
        return Response(
            SignalSerializer(signal).data,
            status=status.HTTP_202_ACCEPTED if applied else status.HTTP_200_OK,
        )


FILE_ID = OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH)


class InstanceFilesView(ApiView):
    @extend_schema(
        summary="The instance's files",
        tags=["files"],
        description="Every file attached to the instance (with its start, to its requests, "
        "comments, resubmissions), oldest first. For whoever may read them: the instance's "
        "starter, staff, operators, and the assignees (current and past), delegates, deciders "
        "and requesters of its approval requests.",
        parameters=[INSTANCE_ID],
        responses={200: AttachmentSerializer(many=True), **_errors(404)},
    )
    def get(self, request: Request, pk: str) -> Response:
        _, files = attachments.instance_files_for_reader(user=request.user, instance_id=pk)
        return Response(AttachmentSerializer(files, many=True).data)


class FileDownloadView(ApiView):
    @extend_schema(
        summary="Download a file",
        tags=["files"],
        description="The file's bytes, as a download (Content-Disposition: attachment, "
        "X-Content-Type-Options: nosniff), with the type read from its bytes when it was "
        "uploaded. 403 (code not_allowed) for a file the caller may not read (only the people "
        "of its instance may: its starter, the people of its requests, staff and operators); "
        "404 for an unknown id.",
        parameters=[FILE_ID],
        responses={
            (200, "*/*"): OpenApiResponse(OpenApiTypes.BINARY, description="The file."),
            **_errors(403, 404),
        },
    )
    def get(self, request: Request, pk: str) -> Any:
        attachment = attachments.attachment_for_reader(user=request.user, attachment_id=pk)
        return attachments.file_response(attachment)

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # The file is not rendered: any Accept is fine, and errors are JSON.
        return super().perform_content_negotiation(request, force=True)


class ApiRootView(ApiView):
    @extend_schema(exclude=True)
    def get(self, request: Request) -> Response:
        return Response(
            {
                "workflows": "/api/v1/workflows/",
                "instances": "/api/v1/instances/",
                "schedules": "/api/v1/schedules/",
                "schema": "/api/schema/",
                "docs": "/api/docs/",
            }
        )


@csrf_exempt
def not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """Unknown paths under /api/v1/ answer JSON like the rest of the API, whatever the method:
    exempt from CSRF, or a POST with a session cookie would get Django's HTML 403 page. It
    reads and changes nothing."""
    return JsonResponse({"detail": "Not found.", "code": "not_found"}, status=404)
