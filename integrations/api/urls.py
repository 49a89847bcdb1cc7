from django.urls import path, re_path

from orchestration.api.views import not_found

from . import views

urlpatterns = [
    path("", views.AlertListView.as_view(), name="api-alerts"),
    re_path(r"^.*$", not_found),
]
