"""Status pages of instances and the Prometheus endpoint, included at the site root."""

from django.urls import path

from . import file_views, metrics, views

app_name = "instances"
urlpatterns = [
    path("instances/<uuid:pk>/", views.instance_status, name="detail"),
    path("instances/<uuid:pk>/live/", views.instance_live, name="live"),
    path("instances/<uuid:pk>/history.json", views.history_json, name="history-json"),
    path("instances/<uuid:pk>/history.csv", views.history_csv, name="history-csv"),
    path("instances/<uuid:pk>/actions/<slug:name>/", views.instance_action, name="action"),
    path(
        "instances/<uuid:pk>/steps/<int:step_id>/<slug:name>/",
        views.step_action,
        name="step-action",
    ),
    path("files/<uuid:pk>/", file_views.file_download, name="file"),
    path("metrics", metrics.metrics_view, name="metrics"),
]
