"""Programs some tests need from the system, not from Python: pdflatex, chromium (not a test module).

``require_tool`` finds the program; when it is absent and the tests run as root on Debian or
Ubuntu, it installs the package with apt-get once (``make test`` on the build machine does this);
otherwise the test is skipped with the reason. ``AMC_TEST_NO_APT=1`` turns the installing off.
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import subprocess

import pytest

APT_TIMEOUT_S = 900
# One apt-get at a time: `make test` runs two pytest workers, and two tests may each install a
# package at once (dpkg refuses the second while the first holds its lock).
APT_LOCK_FILE = "/tmp/amc-tests-apt.lock"


@functools.cache
def _install(package: str) -> str | None:
    """None when apt-get installed ``package``, else why not."""
    if os.environ.get("AMC_TEST_NO_APT"):
        return "AMC_TEST_NO_APT is set"
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    if os.geteuid() != 0:
        return "installing needs root"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    wait = ["-o", f"DPkg::Lock::Timeout={APT_TIMEOUT_S}"]  # and for any other apt-get on the machine
    install = ["apt-get", *wait, "install", "-y", "--no-install-recommends", package]
    with open(APT_LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for command in (install, ["apt-get", *wait, "update"], install):  # update only if the first fails
            try:
                result = subprocess.run(
                    command, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_S
                )
            except subprocess.TimeoutExpired:
                return f"`{' '.join(command)}` took more than {APT_TIMEOUT_S} s"
            if result.returncode == 0 and command is install:
                return None
    return f"`apt-get install {package}` failed: {result.stderr.strip()[-300:]}"


def require_tool(command: str, package: str) -> str:
    """The path of ``command``, installing Debian's ``package`` when missing; skips the test otherwise."""
    found = shutil.which(command)
    if found is None:
        reason = _install(package)
        found = shutil.which(command)
        if found is None:
            pytest.skip(
                f"{command} is not installed and could not be installed ({reason or 'not found after'})"
            )
    return found
