"""A WSGI app for the gunicorn recipe (docs/recipes.md).

    gunicorn -c examples/recipes/gunicorn_conf.py --chdir examples/recipes wsgi_app:app

GET / answers with the worker's pid and instance name as JSON. With
RECIPE_BOOT_FAIL set, importing it takes 2 s and then raises: an app whose
database is down at boot, which is what readiness has to catch.
"""

import json
import os
import time

BOOT_FAIL_AFTER = 2.0

if os.environ.get("RECIPE_BOOT_FAIL"):
    time.sleep(BOOT_FAIL_AFTER)  # connecting to a database that is not there...
    raise RuntimeError("RECIPE_BOOT_FAIL is set: the database is down")


def app(environ, start_response):
    body = json.dumps({"pid": os.getpid(), "instance": os.environ.get("SUPERVISE_NAME", "standalone"),
                       "path": environ.get("PATH_INFO", "/")}).encode() + b"\n"
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
