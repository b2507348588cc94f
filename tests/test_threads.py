"""threads=auto counts the cores a process may use, not the host's."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT

from microrec.errors import ConfigError
from microrec.runs.threads import cgroup_quota, count_threads

PROBE = """
import os, sys, torch
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
from microrec.runs.threads import count_threads, set_threads
threads, _ = count_threads(sys.argv[1] if sys.argv[1] == "auto" else int(sys.argv[1]))
set_threads(threads, "test")
print(threads, torch.get_num_threads(), torch.get_num_interop_threads())
"""


def probe(setting: str, **env) -> list[int]:
    """The chosen count and torch's thread counts in a fresh process pinned to one core."""
    clean = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    clean["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), clean.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", PROBE, setting], env={**clean, **env},
                          capture_output=True, text=True, timeout=120, check=True)
    return [int(n) for n in done.stdout.split()]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_auto_follows_the_cpu_affinity_and_a_number_is_kept():
    assert probe("auto") == [1, 1, 1]  # torch alone would take every core of the host
    assert probe("3") == [3, 3, 3]  # an explicit number is the user's choice


def test_cgroup_quotas_of_both_versions(tmp_path):
    assert cgroup_quota(tmp_path) is None  # neither file: no quota
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_quota(tmp_path) == 1.5
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_quota(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    assert cgroup_quota(v1) == 3


@pytest.mark.parametrize("setting", [0, -2, "many", 1.5, True])
def test_a_bad_setting_is_one_sentence(setting):
    with pytest.raises(ConfigError, match=f"^threads={setting}: give auto or a positive whole "
                                          "number.$"):
        count_threads(setting)


def test_jobs_side_by_side_share_the_cores(monkeypatch):
    monkeypatch.setattr("microrec.runs.threads.usable_cores", lambda: (8, "CPU affinity 8"))
    assert count_threads("auto", side_by_side=3) == (2, "auto: CPU affinity 8, 3 jobs side "
                                                        "by side")
    assert count_threads("auto", side_by_side=16)[0] == 1  # never none
    assert count_threads(5, side_by_side=3) == (5, "as set")  # a number is the user's choice
