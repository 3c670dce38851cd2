"""What Heroku reads to build and run the worker stays in step with the project."""

from __future__ import annotations

import json
import tomllib

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from worker.salesforce.settings import ENV_PREFIX, SalesforceSettings
from worker.settings import WorkerSettings

from .conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
# Settings a deployment never sets by hand: the add-on sets DATABASE_URL; the rest are
# for local work.
NOT_ON_HEROKU = {"WORKER_DB_PATH", "WORKER_DATABASE_URL", "WORKER_LOCAL_ORG", "WORKER_AS_OF"}


def pins() -> dict[str, Version]:
    out = {}
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and line != ".":
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"requirements.txt: {line} is not pinned"
            out[canonicalize_name(req.name)] = Version(spec.version)
    return out


def test_requirements_install_the_project_and_pin_what_pyproject_asks_for() -> None:
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert "." in lines  # the buildpack installs the worker itself (its sop-worker command)
    pinned = pins()
    for text in PYPROJECT["dependencies"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pinned, f"requirements.txt lacks {req.name} (`make requirements`)"
        assert req.specifier.contains(pinned[name]), (
            f"requirements.txt pins {req.name}=={pinned[name]}, outside pyproject's {req.specifier}"
        )


def test_python_version_is_one_pyproject_allows() -> None:
    version = (ROOT / ".python-version").read_text(encoding="utf-8").strip()
    assert SpecifierSet(PYPROJECT["requires-python"]).contains(Version(version))


def test_procfile_migrates_on_release_and_runs_the_worker() -> None:
    lines = (ROOT / "Procfile").read_text(encoding="utf-8").splitlines()
    processes = dict(line.split(": ", 1) for line in lines if line.strip())
    assert processes["release"] == "sop-worker db migrate"
    assert processes["worker"] == "sop-worker run --loop"


def test_app_json_has_the_add_ons_and_describes_every_setting() -> None:
    app = json.loads((ROOT / "app.json").read_text(encoding="utf-8"))
    plans = {addon["plan"].split(":")[0] for addon in app["addons"]}
    assert {"heroku-postgresql", "scheduler"} <= plans
    settings = {
        prefix + name.upper(): field.description
        for cls, prefix in ((WorkerSettings, "WORKER_"), (SalesforceSettings, ENV_PREFIX))
        for name, field in cls.model_fields.items()
    }
    wanted = {k: v for k, v in settings.items() if k not in NOT_ON_HEROKU}
    assert set(app["env"]) == set(wanted)
    for name, description in wanted.items():
        assert app["env"][name]["description"] == description, name
