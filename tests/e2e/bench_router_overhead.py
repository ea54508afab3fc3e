"""Router overhead under many concurrent streams (a measurement, not a test).

Starts `duet router --tokenizer byte`, registers one prefill and one decode
protocol test peer (asyncio; the decode peer sends ONE batched TOKENS frame
per step for every running request, as a real decode node does), opens S
streaming completions with raw asyncio sockets, and reports:

- router CPU seconds per delivered token (from /proc/<pid>/stat) and the
  implied router work per decode step at S streams (CPU/token x S): the
  part of inter-token latency the router adds when it turns one step into
  S SSE chunks on its single thread;
- client-observed inter-token latency p50/p99 against the peer's step
  interval (includes Python client and peer overhead: an upper bound).

Usage: DUET_BUILD=build .venv/bin/python tests/e2e/bench_router_overhead.py \
           [--streams 256] [--tokens 64] [--step-ms 20] [--json]
Needs msgpack (tests/requirements.txt).
"""
import argparse
import asyncio
import json
import os
import struct
import sys
import time

import msgpack

sys.path.insert(0, os.path.dirname(__file__))
from router_peer import (FIRST_TOKEN, FINISH, HEARTBEAT, HELLO, PREFILL, TOKEN,  # noqa: E402
                         TOKENS, Router)


def pack(t, **f):
    p = msgpack.packb({"t": t, "v": 1, **f})
    return struct.pack(">I", len(p)) + p


async def read_frame(reader):
    n = struct.unpack(">I", await reader.readexactly(4))[0]
    return msgpack.unpackb(await reader.readexactly(n))


async def node(port, role, name):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(pack(HELLO, role=role, node=name, token=TOKEN, model=0, tp=1, block_size=16,
                      blocks=100000, ucx=["127.0.0.1:1"] if role == "decode" else []))
    await writer.drain()
    await read_frame(reader)
    return reader, writer


async def heartbeat(writer):
    while True:
        writer.write(pack(HEARTBEAT, running=0, waiting=0, free_blocks=100000, queued_tokens=0))
        await asyncio.sleep(0.5)


async def prefill_loop(reader, writer, active):
    while True:
        f = await read_frame(reader)
        if f["t"] == PREFILL:
            writer.write(pack(FIRST_TOKEN, rid=f["rid"], token=ord("a")))
            active[f["rid"]] = 1


async def decode_loop(reader, writer, active, tokens, step, sent_at):
    async def drain_input():
        while True:
            await read_frame(reader)          # RESERVE / ABORT: nothing to do
    asyncio.ensure_future(drain_input())
    while True:
        await asyncio.sleep(step)
        if not active:
            continue
        items, done = [], []
        for rid, n in active.items():
            items.append([rid, ord("b") + n % 20])
            active[rid] = n + 1
            if n + 1 >= tokens:
                done.append(rid)
        sent_at.append(time.monotonic())
        writer.write(pack(TOKENS, items=items))
        for rid in done:
            del active[rid]
            writer.write(pack(FINISH, rid=rid, reason="length"))


async def stream(port, tokens, gaps):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"prompt": "hello", "max_tokens": tokens, "stream": True,
                       "ignore_eos": True}).encode()
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                 b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()
    last, n = None, 0
    buf = b""
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            break
        now = time.monotonic()
        k = chunk.count(b"data: {")
        if k:
            if last is not None:
                gaps.append(now - last)
            last = now
            n += k
        buf = (buf + chunk)[-64:]
        if b"[DONE]" in buf:
            break
    writer.close()
    return n


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main(args):
    duet = os.path.join(os.environ.get("DUET_BUILD", "build"), "cli", "duet")
    r = Router(duet, "--max-inflight", str(args.streams * 2))
    try:
        active, sent_at, gaps = {}, [], []
        pr, pw = await node(r.ctl_port, "prefill", "p0")
        dr, dw = await node(r.ctl_port, "decode", "d0")
        tasks = [asyncio.ensure_future(heartbeat(pw)), asyncio.ensure_future(heartbeat(dw)),
                 asyncio.ensure_future(prefill_loop(pr, pw, active)),
                 asyncio.ensure_future(decode_loop(dr, dw, active, args.tokens,
                                                   args.step_ms / 1000, sent_at))]
        cpu0, t0 = cpu_seconds(r.proc.pid), time.monotonic()
        counts = await asyncio.gather(*[stream(r.http_port, args.tokens, gaps)
                                        for _ in range(args.streams)])
        wall, cpu = time.monotonic() - t0, cpu_seconds(r.proc.pid) - cpu0
        for t in tasks:
            t.cancel()
        delivered = sum(counts)
        gaps.sort()
        per_tok = cpu / max(delivered, 1)
        out = {
            "streams": args.streams, "tokens_per_stream": args.tokens,
            "step_ms": args.step_ms, "chunks_delivered": delivered, "wall_s": round(wall, 3),
            "router_cpu_s": round(cpu, 3),
            "router_cpu_us_per_token": round(per_tok * 1e6, 2),
            "router_ms_per_step_at_S_streams": round(per_tok * args.streams * 1e3, 3),
            "client_itl_p50_ms": round(gaps[len(gaps) // 2] * 1e3, 2) if gaps else None,
            "client_itl_p99_ms": round(gaps[int(len(gaps) * 0.99)] * 1e3, 2) if gaps else None,
        }
        print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    finally:
        r.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--step-ms", type=float, default=20)
    ap.add_argument("--json", action="store_true")
    asyncio.run(main(ap.parse_args()))
