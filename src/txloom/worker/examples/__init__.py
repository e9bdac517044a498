"""Example apps for the worker host; ``APPS_DIR`` holds their manifests.

``twistd workerhost --apps $(python -c 'from txloom.worker.examples import APPS_DIR;
print(APPS_DIR)') --runtime /tmp/txloom-run`` serves them.
"""

from pathlib import Path

#: Manifests of the example apps (``echo`` and the WSGI ``hello``).
APPS_DIR = Path(__file__).resolve().parent / "apps"
