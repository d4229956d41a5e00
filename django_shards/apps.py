from django.apps import AppConfig


class ShardsConfig(AppConfig):
    name = "django_shards"
    verbose_name = "Shards"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core.signals import setting_changed

        from django_shards import checks  # noqa: F401  (registers the system checks)
        from django_shards.conf import _on_setting_changed

        setting_changed.connect(_on_setting_changed, dispatch_uid="django_shards.settings")
