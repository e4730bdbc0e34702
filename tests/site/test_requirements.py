"""Every package the app runs on is pinned in requirements.txt, transitive ones included,
at the version installed here (a fresh `make install` gets exactly what was tested)."""

import re
from importlib import metadata

from tests import ROOT

REQUIREMENTS = ROOT / "requirements.txt"
TOOLS = {"pip", "setuptools", "wheel"}  # the venv's own


def normalized(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def pins():
    found = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{line!r} is not pinned with =="
            found[normalized(name.split("[", 1)[0])] = version
    return found


def test_every_installed_package_is_pinned_at_its_installed_version():
    pinned = pins()
    installed = {normalized(d.metadata["Name"]): d.version for d in metadata.distributions()}
    unpinned = sorted(set(installed) - set(pinned) - TOOLS)
    assert unpinned == []
    differ = {
        name: (pinned[name], installed[name])
        for name in pinned
        if name in installed and installed[name].split("+")[0] != pinned[name]
    }
    assert differ == {}


def test_redis_py_is_held_below_8_which_breaks_channels_blocking_reads():
    assert pins()["redis"] == "7.4.1"
