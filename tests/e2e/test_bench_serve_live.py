"""`duet bench serve` against a live `duet serve` (the real router and node
services with SmolLM2): counts add up, throughput is tokens over elapsed
time, and random prompts have exactly the requested token count through
the real tokenizer. Skips when this build has no `duet serve`."""
import json
import signal
import socket
import subprocess
import time
import urllib.request

import pytest


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("shape", [["--colocated", "--threads", "1"],
                                   ["--prefill", "1", "--decode", "1", "--threads", "1"]],
                         ids=["colocated", "1P1D"])
def test_live_duet_serve(duet_bin, smollm2, shape):
    if subprocess.run([duet_bin, "serve", "--help"], capture_output=True).returncode != 0:
        pytest.skip("this build has no duet serve")
    port, ctl = free_port(), free_port()
    proc = subprocess.Popen([duet_bin, "serve", "--model", smollm2, "--port", str(port),
                             "--ctl-port", str(ctl), *shape], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:
                pass
            assert time.monotonic() < end, "duet serve did not become healthy"
            time.sleep(0.2)
        p = subprocess.run([duet_bin, "bench", "serve", "--base-url", base, "--model", smollm2,
                            "--dataset", "fixed", "--input-len", "16", "--output-len", "4",
                            "--ignore-eos", "-n", "4", "-c", "2", "--request-rate", "20",
                            "--goodput", "ttft:60000", "--json"],
                           capture_output=True, text=True, timeout=180)
        assert p.returncode == 0, p.stderr
        res = json.loads(p.stdout)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    for mark in ("runtime error:", "AddressSanitizer", "LeakSanitizer"):
        assert mark not in err, err
    assert res["completed"] == 4 and res["failed"] == 0, res["error_samples"]
    assert res["completed"] + res["failed"] == res["sent"] == 4
    assert res["output_tokens_from"] == "usage"
    assert res["total_input_tokens"] == 4 * 16          # exact lengths through the router
    assert res["total_output_tokens"] == 4 * 4          # ignore_eos
    d = res["duration"]
    assert res["output_throughput"] == pytest.approx(16 / d, rel=1e-6)
    assert res["total_token_throughput"] == pytest.approx(80 / d, rel=1e-6)
    assert res["request_throughput"] == pytest.approx(4 / d, rel=1e-6)
    assert res["request_goodput"] == pytest.approx(4 / d, rel=1e-6)
    assert 0 < res["mean_ttft_ms"] < res["mean_e2el_ms"]
