"""Session-wide test settings.

One process runs every test, so it ends up holding SAPIEN's Vulkan renderer (the in-process closed-loop
tests) beside torch, ONNX Runtime and tokenizers' native thread pools; with all of them loaded, a C++
static destructor crashes (SIGSEGV) after Python has finalized — every test already reported, no
Python frame on the stack. The process therefore ends with pytest's own exit status through
`os._exit`, once pytest has written its report, skipping only those native destructors.
"""
from __future__ import annotations

import os
import sys

import pytest

_exit_status: int | None = None


def pytest_configure(config: pytest.Config) -> None:
    # A Ray the tests start waits this long for its GCS to come up (Ray's default, 30 s, is not enough
    # on a loaded 2-core machine); child processes inherit it.
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "120")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if _exit_status is None:  # pytest did not get as far as a session (usage error): normal exit
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status)
