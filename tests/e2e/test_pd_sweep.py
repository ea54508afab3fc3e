"""bench/pd_sweep and bench/profile are benchmarks (not run in CI as such);
this checks that they start, refuse clearly what they cannot do, and --
when the build has `duet serve` -- that a one-split sweep writes a CSV
that `duet plan --compare` reads."""
import csv
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent


def script(name, *args, timeout=60, env=None):
    return subprocess.run([sys.executable, str(ROOT / "bench" / name), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_help():
    for name in ("pd_sweep", "profile"):
        p = script(name, "--help")
        assert p.returncode == 0 and "usage:" in p.stdout, p.stderr


def has_serve(duet_bin):
    return subprocess.run([duet_bin, "serve", "--help"], capture_output=True).returncode == 0


def test_sweep_and_compare(duet_bin, smollm2, tmp_path):
    out = tmp_path / "sweep"
    args = ["--duet", duet_bin, "--model", smollm2, "--budget", "2", "--splits", "1:1",
            "--no-colocated", "--rates", "8", "--num-prompts", "3", "--num-warmups", "0",
            "--input-len", "8", "--output-len", "3", "--goodput", "ttft:60000 tpot:60000",
            "--out", str(out)]
    if not has_serve(duet_bin):
        p = script("pd_sweep", *args)
        assert p.returncode != 0 and "no 'duet serve'" in p.stderr, p.stderr
        pytest.skip("this build has no duet serve")
    p = script("pd_sweep", *args, timeout=300)
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert [r["config"] for r in rows] == ["1P:1D tp1"]
    assert rows[0]["status"] == "ok" and rows[0]["completed"] == "3"
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"prefill": [{"tokens": 16, "ms": 20}, {"tokens": 256, "ms": 300}],
                                "decode": [{"batch": 1, "step_ms": 20}, {"batch": 8, "step_ms": 40}]}))
    p = subprocess.run([duet_bin, "plan", "--profile", str(prof), "--goodput", "ttft:60000",
                        "--compare", str(out / "sweep.csv"), "--json"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    cmp = json.loads(p.stdout)["compare"]
    assert cmp[0]["config"] == "1P:1D tp1/tp1" and cmp[0]["measured_attainment"] == 1.0
