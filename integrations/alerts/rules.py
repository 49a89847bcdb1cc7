"""What an alert rule must be: a known condition with its parameters, and at least one channel
that can be reached (valid mail addresses or a group, an https:// webhook)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from .. import webhook_http
from .conditions import get_condition

MAX_ADDRESSES = 50
MAX_THRESHOLD = timedelta(days=365)


def webhook_url_problem(url: str) -> str | None:
    """Why ``url`` cannot receive alerts, or None. https:// always; http:// only to a host
    listed in ``SIGNOFF_ALERT_HTTP_HOSTS`` (a receiver on the same machine, tests)."""
    parts = urlsplit(url)
    if not parts.hostname:
        return "Use an https:// URL with a host."
    if parts.username or parts.password:
        return "Put no user name or password in the URL (the request is signed)."
    allowed = getattr(settings, "SIGNOFF_ALERT_HTTP_HOSTS", [])
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in allowed):
        return "Use an https:// URL."
    # The webhooks' guard: no loopback, link-local or private target (also after DNS).
    try:
        webhook_http.check_target(url)
    except webhook_http.TargetRefused as exc:
        return str(exc)
    return None


def rule_problems(rule: Any) -> dict[str, str]:
    """Field name → what is wrong, for an ``AlertRule`` (empty when it is valid)."""
    errors: dict[str, str] = {}
    condition = get_condition(rule.condition or "")
    if condition is None:
        errors["condition"] = f"Unknown condition {rule.condition!r}."
    for name, label in (("stuck_after", "threshold"), ("overdue_grace", "grace")):
        value = getattr(rule, name)
        if value is not None and value < timedelta(0):
            errors[name] = f"The {label} cannot be negative."
        elif value is not None and value > MAX_THRESHOLD:
            errors[name] = f"The {label} is at most 365 days."
    if condition is not None:
        for name in condition.requires:
            value = getattr(rule, name, None)
            if name not in errors and (value is None or value <= timedelta(0)):
                errors[name] = f"Required for {condition.name} (longer than zero)."
    addresses = rule.mail_addresses
    if len(addresses) > MAX_ADDRESSES:
        errors["mail_to"] = f"At most {MAX_ADDRESSES} addresses."
    else:
        bad = []
        for address in addresses:
            try:
                validate_email(address)
            except ValidationError:
                bad.append(address)
        if bad:
            errors["mail_to"] = f"Not a mail address: {', '.join(bad[:5])}."
    if rule.webhook_url and (problem := webhook_url_problem(rule.webhook_url)):
        errors["webhook_url"] = problem
    if not addresses and rule.mail_group_id is None and not rule.webhook_url:
        errors["__all__"] = "Give at least one channel: mail addresses, a group or a webhook URL."
    return errors
