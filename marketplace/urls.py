from django.urls import path

from marketplace import views

urlpatterns = [
    path("rigs/<slug:name>/marketplace/", views.rig_marketplace, name="rig_marketplace"),
    path("rigs/<slug:name>/marketplace/refresh/", views.rig_router_refresh, name="rig_router_refresh"),
]
