from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from nodes import reauth

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("login/confirm/", reauth.confirm_password, name="reauth"),
    path("", include("accounts.urls")),
    path("admin/", admin.site.urls),
    path("", include("models_catalog.urls")),
    path("", include("hosting.urls")),
    path("", include("marketplace.urls")),
    path("", include("metrics.urls")),
    path("", include("alerts.urls")),
    path("", include("api.urls")),
    path("", include("audit.urls")),
    path("", include("nodes.urls")),
]
