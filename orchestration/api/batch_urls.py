"""URLs of the batch operations API, under ``/api/v1/batches/``."""

from django.urls import path

from . import batch_views

urlpatterns = [
    path("", batch_views.BatchListView.as_view(), name="api-batches"),
    path("<str:pk>/", batch_views.BatchDetailView.as_view(), name="api-batch"),
    path("<str:pk>/cancel/", batch_views.BatchCancelView.as_view(), name="api-batch-cancel"),
]
