from django.urls import path

from accounts import views

urlpatterns = [
    path("login/verify/", views.verify, name="login_verify"),
    path("security/", views.security, name="security"),
    path("security/remove/", views.remove_device, name="security_remove"),
    path("security/lockouts/", views.lockout_list, name="lockout_list"),
    path("security/lockouts/unlock/", views.lockout_unlock, name="lockout_unlock"),
]
