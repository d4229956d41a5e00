from django.apps import AppConfig


class ShardsConfig(AppConfig):
    name = "django_shards"
    verbose_name = "Shards"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_migrate, post_save

        from django_shards import (
            checks,  # noqa: F401  (registers the system checks)
            key_changes,
            lookup_index,
            metrics,
            replicas,  # noqa: F401  (connects read_mirror_without_locks)
        )
        from django_shards.catalog import record_initial_versions
        from django_shards.routing import pin_after_save

        post_save.connect(pin_after_save, dispatch_uid="django_shards.pin_after_save")
        post_delete.connect(pin_after_save, dispatch_uid="django_shards.pin_after_delete")
        assert self.apps is not None  # the registry sets it before it calls ready()
        key_changes.connect(self.apps.get_models())
        lookup_index.connect(self.apps.get_models())
        metrics.register()  # on prometheus_client.REGISTRY, when it is installed
        post_migrate.connect(
            record_initial_versions, sender=self, dispatch_uid="django_shards.record_maps"
        )
