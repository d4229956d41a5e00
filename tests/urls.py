from django.contrib import admin
from django.urls import include, path

from tests import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("shards/", include("django_shards.urls")),
    path("t/authors/", views.create_author),
    path("t/authors/<int:pk>/", views.read_author),
]
