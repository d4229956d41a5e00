"""The online split's phases: ``copying`` replaces ``copied``, ``catching_up`` is new.

A job recorded as ``copied`` (its copy complete) becomes ``copying``: resuming it finds
every table complete and goes on to verification, as before.
"""

from django.db import migrations, models


def copied_to_copying(apps, schema_editor):
    SplitJob = apps.get_model("django_shards", "SplitJob")
    SplitJob.objects.using(schema_editor.connection.alias).filter(phase="copied").update(
        phase="copying"
    )


def copying_to_copied(apps, schema_editor):
    SplitJob = apps.get_model("django_shards", "SplitJob")
    alias = schema_editor.connection.alias
    SplitJob.objects.using(alias).filter(phase__in=["copying", "catching_up"]).update(
        phase="copied"
    )


class Migration(migrations.Migration):
    dependencies = [
        ("django_shards", "0003_map_version_options"),
    ]

    operations = [
        migrations.AlterField(
            model_name="splitjob",
            name="phase",
            field=models.CharField(
                choices=[
                    ("planned", "Planned"),
                    ("prepared", "Prepared"),
                    ("copying", "Copying"),
                    ("catching_up", "Catching Up"),
                    ("frozen", "Frozen"),
                    ("verified", "Verified"),
                    ("cut_over", "Cut Over"),
                    ("cleaned", "Cleaned"),
                    ("done", "Done"),
                    ("aborted", "Aborted"),
                ],
                default="planned",
                max_length=20,
            ),
        ),
        migrations.RunPython(copied_to_copying, copying_to_copied),
    ]
