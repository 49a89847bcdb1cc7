"""“My requests” (``/requests/``): its own namespace, so the navigation marks it apart from
the inbox."""

from django.urls import path

from . import request_views

app_name = "requests"
urlpatterns = [
    path("", request_views.my_requests, name="list"),
]
