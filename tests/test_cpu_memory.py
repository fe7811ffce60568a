"""tsmixit.cpu_memory: with TSMIXIT_MALLOC=keep a big tensor allocated again and again stops
costing page faults (its memory stays mapped); by default every allocation faults anew. Each
case runs in a child process (the setting is process-wide)."""

import os
import subprocess
import sys

import pytest

from tsmixit.cpu_memory import MALLOC_ENV

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")

# Apply the setting, then allocate, fill and free a 64 MiB tensor 20 times; print whether the
# setting took effect and the minor page faults of the last 5 rounds.
CHILD = """
import resource, torch
from tsmixit.cpu_memory import keep_freed_memory
kept = keep_freed_memory()
faults = []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 * 2**20).fill_(1.0)  # 64 MiB of float32
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(kept, sum(faults[-5:]))
"""

PAGES = 5 * 64 * 2**20 // 4096  # 4 KiB pages touched by the last 5 rounds


def run_child(setting: str | None) -> tuple[str, int, str]:
    env = {k: v for k, v in os.environ.items() if k != MALLOC_ENV}
    if setting is not None:
        env[MALLOC_ENV] = setting
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                         text=True, check=True)
    kept, faults = out.stdout.split()
    return kept, int(faults), out.stderr


def test_by_default_every_big_allocation_faults_on_each_page():
    kept, faults, _ = run_child(None)
    assert kept == "False"
    assert faults >= 0.95 * PAGES


def test_kept_memory_is_reused_without_page_faults():
    kept, faults, _ = run_child("keep")
    assert kept == "True"
    assert faults < 0.05 * PAGES


def test_an_unknown_setting_warns_and_changes_nothing():
    kept, faults, err = run_child("fast")
    assert kept == "False" and faults >= 0.95 * PAGES
    assert MALLOC_ENV in err and "'keep'" in err
