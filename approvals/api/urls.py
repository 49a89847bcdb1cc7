from django.urls import path, re_path

from orchestration.api.views import not_found

from . import claim_views, comment_views, decision_views, views

urlpatterns = [
    path("", views.ApprovalListView.as_view(), name="api-approvals"),
    path("<int:pk>/", views.ApprovalDetailView.as_view(), name="api-approval"),
    path(
        "<int:pk>/approve/",
        decision_views.ApprovalApproveView.as_view(),
        name="api-approval-approve",
    ),
    path(
        "<int:pk>/reject/", decision_views.ApprovalRejectView.as_view(), name="api-approval-reject"
    ),
    path("<int:pk>/claim/", claim_views.ApprovalClaimView.as_view(), name="api-approval-claim"),
    path(
        "<int:pk>/release/",
        claim_views.ApprovalReleaseView.as_view(),
        name="api-approval-release",
    ),
    path(
        "<int:pk>/take-over/",
        claim_views.ApprovalTakeOverView.as_view(),
        name="api-approval-take-over",
    ),
    path(
        "<int:pk>/reassign/",
        claim_views.ApprovalReassignView.as_view(),
        name="api-approval-reassign",
    ),
    path(
        "<int:pk>/request-changes/",
        decision_views.ApprovalRequestChangesView.as_view(),
        name="api-approval-request-changes",
    ),
    path(
        "<int:pk>/resubmit/",
        decision_views.ApprovalResubmitView.as_view(),
        name="api-approval-resubmit",
    ),
    path(
        "<int:pk>/withdraw/",
        decision_views.ApprovalWithdrawView.as_view(),
        name="api-approval-withdraw",
    ),
    path(
        "<int:pk>/comments/",
        comment_views.ApprovalCommentsView.as_view(),
        name="api-approval-comments",
    ),
    # Anything else here (a non-integer id, a typo) is a JSON 404 like the rest of the API.
    re_path(r"^.*$", not_found),
]
