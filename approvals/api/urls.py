from django.urls import path, re_path

from orchestration.api.views import not_found

from . import views

urlpatterns = [
    path("", views.ApprovalListView.as_view(), name="api-approvals"),
    path("<int:pk>/", views.ApprovalDetailView.as_view(), name="api-approval"),
    path("<int:pk>/approve/", views.ApprovalApproveView.as_view(), name="api-approval-approve"),
    path("<int:pk>/reject/", views.ApprovalRejectView.as_view(), name="api-approval-reject"),
    path("<int:pk>/comments/", views.ApprovalCommentsView.as_view(), name="api-approval-comments"),
    # Anything else here (a non-integer id, a typo) is a JSON 404 like the rest of the API.
    re_path(r"^.*$", not_found),
]
