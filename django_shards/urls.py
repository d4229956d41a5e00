"""URLs of the status page and the Prometheus metrics (``metrics/``), both staff only:
``path("shards/", include("django_shards.urls"))``."""

from django.urls import path

from django_shards import metrics, views

app_name = "django_shards"

urlpatterns = [
    path("", views.status, name="status"),
    path("metrics/", metrics.metrics_view, name="metrics"),
]
