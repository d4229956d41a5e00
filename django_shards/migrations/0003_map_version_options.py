"""Each stored map version records its strategy's options, so it decodes on its own.

Versions stored before this migration were decoded with the settings' options: they get
those options now (from the settings of the deploy that runs this migration).
"""

from django.db import migrations, models


def copy_options_from_settings(apps, schema_editor):
    from django.conf import settings

    groups = (getattr(settings, "DJANGO_SHARDS", None) or {}).get("GROUPS") or {}
    ShardMapVersion = apps.get_model("django_shards", "ShardMapVersion")
    for row in ShardMapVersion.objects.using(schema_editor.connection.alias).all():
        group = groups.get(row.group)
        options = group.get("OPTIONS") if isinstance(group, dict) else None
        if isinstance(options, dict) and options:
            row.options = options
            row.save(update_fields=["options"])


class Migration(migrations.Migration):
    dependencies = [
        ("django_shards", "0002_split_job"),
    ]

    operations = [
        migrations.AddField(
            model_name="shardmapversion",
            name="options",
            field=models.JSONField(default=dict, help_text="the strategy's OPTIONS"),
        ),
        migrations.AlterField(
            model_name="shardmapversion",
            name="strategy",
            field=models.CharField(help_text="dotted path of the strategy class", max_length=255),
        ),
        migrations.RunPython(copy_options_from_settings, migrations.RunPython.noop),
    ]
