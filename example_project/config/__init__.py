"""The example project's configuration.

The example runs from a checkout: when django_shards is not installed (``pip install -e .``
does it), the repository root is put on ``sys.path`` so the checkout's copy is used.
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("django_shards") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
