"""duet bench kv: a small run over TCP and over shared memory reports every
field, and the figures agree with each other (ratios of the figures printed
next to them, bytes of the case's shape); bad flags are usage errors and a
slab too small for the requests in flight fails the case. Figures are not
judged here (docs/benchmarks.md)."""
import json
import os

import pytest

from conftest import run_duet

SMALL = ("--slab-mib", "128", "--case", "smollm2 b8", "-n", "3", "-r", "2",
         "--stream-mib", "16", "--us-per-token", "1", "--no-perftest", "--log-level", "error")


@pytest.mark.parametrize("tls", ["tcp,self", "sm,self,tcp"])
def test_json_report(duet_bin, tls):
    env = dict(os.environ, UCX_TLS=tls)
    r = run_duet(duet_bin, "bench", "kv", *SMALL, "--depth", "2", "--json", env=env,
                 timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["ucx_tls"] == tls and d["slab_mib"] == 128 and d["depth"] == 2
    assert d["cuda"] is False
    [c] = d["cases"]
    assert c["case"] == "smollm2 b8" and c["tp"] == [1, 1]
    # 30 layers x 8 blocks x K and V x 3 heads x 16 tokens x 64 dims x 2 bytes
    assert c["bytes_per_req"] == 30 * 8 * 2 * 3 * 16 * 64 * 2
    for k in ("gbps", "serial_gbps", "p50_ms", "p99_ms", "ref_put_gbps", "ref_memcpy_gbps",
              "puts_per_req", "ratio_put", "ratio_memcpy"):
        assert c[k] > 0, (k, c)
    assert c["p99_ms"] >= c["p50_ms"]
    assert len(c["rounds"]) == 2
    for x in c["rounds"]:
        assert x["gbps"] > 0 and x["serial_gbps"] > 0 and x["perftest_gbps"] == 0
    assert c["perftest_gbps"] == 0 and c["ratio_perftest"] == 0
    if tls.startswith("tcp"):
        # over TCP the writes are DATA messages of at most 60 KiB
        assert c["data_msgs_per_req"] == c["puts_per_req"]
        assert c["bytes_per_req"] / c["puts_per_req"] <= 60 * 1024
    else:
        assert c["data_msgs_per_req"] == 0
    # the pipelining check ran with its layer compute time
    assert c["check_layer_ms"] == pytest.approx(0.512)
    assert c["check_tail_between_ms"] > 0 and c["check_tail_thread_ms"] > 0


def test_heterogeneous_tp(duet_bin):
    # 2 prefill ranks to 3 decode ranks: a request completes only once every
    # decode rank has its heads, in the one-at-a-time and the streamed pass
    args = [a if a != "smollm2 b8" else "tp 2->3" for a in SMALL]
    r = run_duet(duet_bin, "bench", "kv", *args, "--json",
                 env=dict(os.environ, UCX_TLS="tcp,self"), timeout=300)
    assert r.returncode == 0, r.stderr
    [c] = json.loads(r.stdout)["cases"]
    assert c["tp"] == [2, 3] and c["kv_heads"] == 6
    # 30 layers x 64 blocks x K and V x 6 heads x 16 tokens x 64 dims x 2 bytes
    assert c["bytes_per_req"] == 30 * 64 * 2 * 6 * 16 * 64 * 2
    assert c["gbps"] > 0 and c["serial_gbps"] > 0 and c["data_msgs_per_req"] > 0


@pytest.mark.parametrize("flag", [("--depth", "0"), ("--depth", "17"), ("--stream-mib", "0"),
                                  ("--hot-side", "left"), ("--rounds", "0")])
def test_bad_flags(duet_bin, flag):
    r = run_duet(duet_bin, "bench", "kv", *flag)
    assert r.returncode == 2
    assert flag[0] in r.stderr


def test_slab_too_small_for_depth(duet_bin):
    # 128 MiB holds 364 SmolLM2 blocks: 91 per slot at depth 4, 22 at depth 16,
    # too few for the check's 32-block prompt
    r = run_duet(duet_bin, "bench", "kv", *SMALL, "--depth", "16", env=dict(
        os.environ, UCX_TLS="tcp,self"))
    assert r.returncode == 1
    assert "too few blocks" in r.stderr and "16 requests of 32 blocks in flight" in r.stderr
