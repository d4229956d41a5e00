"""URLs of the status page: ``path("shards/", include("django_shards.urls"))``."""

from django.urls import path

from django_shards import views

app_name = "django_shards"

urlpatterns = [
    path("", views.status, name="status"),
]
