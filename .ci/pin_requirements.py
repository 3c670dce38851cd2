"""Print requirements.txt from a `pip install --dry-run --report` of the project: the
project itself (".") and every runtime dependency pinned to the version pip resolved."""

import json
import sys

HEADER = """\
# What Heroku's Python buildpack installs: the worker and its runtime dependencies, pinned.
# Kept in step with pyproject.toml (tests/test_deploy.py checks it); `make requirements`
# writes it anew after a dependency changes.
."""

report = json.load(open(sys.argv[1], encoding="utf-8"))
pins = sorted(
    (item["metadata"]["name"], item["metadata"]["version"])
    for item in report["install"]
    if item["metadata"]["name"] != "sop-worker"
)
print(HEADER)
for name, version in pins:
    print(f"{name}=={version}")
