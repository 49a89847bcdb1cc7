from django.contrib import admin
from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect
from django.templatetags.static import static
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from approvals.links import action_link
from approvals.mail_views import preferences_link
from orchestration import views as orchestration_views


def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers and crawlers ask for /favicon.ico whatever the page links: send them to the SVG."""
    return HttpResponsePermanentRedirect(static("approvals/favicon.svg"))


urlpatterns = [
    path("", orchestration_views.home, name="home"),
    path("favicon.ico", favicon, name="favicon"),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("inbox/", include("approvals.urls")),
    path("start/", include("orchestration.start_urls")),
    path("requests/", include("approvals.request_urls")),  # "My requests"
    path("", include("orchestration.urls")),  # /instances/<id>/ status pages, /metrics
    path("a/<str:token>/", action_link, name="action-link"),
    path("mail/<str:token>/", preferences_link, name="mail-preferences-link"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    # approvals first: the orchestration API ends with a JSON catch-all 404
    path("api/v1/approvals/", include("approvals.api.urls")),
    path("api/v1/alerts/", include("integrations.api.urls")),
    path("api/v1/batches/", include("orchestration.api.batch_urls")),
    path("api/v1/", include("orchestration.api.urls")),
]
