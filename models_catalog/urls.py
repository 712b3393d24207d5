from django.urls import path

from models_catalog import views

urlpatterns = [
    path("models/", views.catalogue, name="catalogue"),
    path("models/search/", views.search, name="model_search"),
    path("models/refresh/", views.catalogue_refresh, name="catalogue_refresh"),
    path("models/hub/add/", views.add_to_catalogue, name="add_to_catalogue"),
    path("models/hub/<path:repo_id>/", views.hub_repo, name="hub_repo"),
    path("models/files/<int:pk>/", views.model_file_detail, name="model_file_detail"),
    path("models/files/<int:pk>/download/", views.download, name="model_file_download"),
    path("models/files/<int:pk>/facts/", views.refresh_facts, name="model_file_facts"),
    path("models/settings/", views.hub_settings, name="hub_settings"),
    path("rigs/<slug:name>/files/", views.rig_files, name="rig_files"),
    path("rigs/<slug:name>/files/scan/", views.rig_scan, name="rig_scan"),
    path("rigs/<slug:name>/files/<int:pk>/delete/", views.rig_file_delete, name="rig_file_delete"),
]
