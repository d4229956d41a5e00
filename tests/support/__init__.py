"""What the tests share, imported by name (``conftest.py`` keeps only fixtures and hooks):

- ``backend``: which database the suite runs on (``MARIADB``), waiting for the replicas;
- ``twins``: comparing the sharded models with their unsharded twins (the differential tests);
- ``replication``: breaking replication on the real MariaDB topology;
- ``splitting``: the split tests' hold hook and waits; ``held_split``: their subprocess entry
  point (``python -m tests.support.held_split``).
"""
