"""What the signed channel costs per message, against the plain JSON that carried the same message before.

    .venv/bin/python bench/channel.py              # 20,000 of each, medians of 5 runs
    .venv/bin/python bench/channel.py --n 50000

Measured on the real code (nodes/agent/envelope.py): an 8-GPU telemetry report signed by the agent and opened by
the panel worker (HMAC-SHA256 over the JSON body), a command envelope signed by the panel and opened by the agent,
a secret sealed for one rig (Fernet), and the key derivation a rig's token goes through once (HKDF; cached after).
The baseline is what the old path did with the same data: `json.dumps` on send and `json.loads` on receipt.
"""

import argparse
import json
import statistics
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nodes.agent import envelope  # noqa: E402

TOKEN = "bench-token-" + "x" * 32


def telemetry(gpus=8):
    return {"at": time.time(), "host": {"cpu_percent": 12.5, "ram_used": 17 * 2**30, "ram_total": 64 * 2**30,
                                        "disk_free": 500 * 2**30},
            "gpus": [{"index": i, "util": 87.0, "vram_used": 20 * 2**30, "temp_c": 71.0, "power_w": 312.5, "fan": 55.0,
                      "sm_clock": 1695} for i in range(gpus)]}


def per_call_us(fn, n, repeat):
    return statistics.median(t / n * 1e6 for t in timeit.repeat(fn, number=n, repeat=repeat))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    keys = envelope.derive_keys(TOKEN)
    payload = telemetry()
    old = {"node": "alpha", "token": TOKEN, "kind": "telemetry", "payload": payload, "sent_at": time.time()}
    old_wire = json.dumps(old)
    signed = envelope.sign_report(keys, rig="alpha", kind="telemetry", payload=payload, seq=1)
    command = envelope.sign_command(keys, task="agent.ping", rig="alpha", args={}, operation=1, ttl=120)
    spec = {"deployment_id": 3, "api_key": envelope.seal(keys, "sk-bench-0123456789")}

    rows = [
        ("report: plain JSON send (baseline)", per_call_us(lambda: json.dumps(old), args.n, args.repeat)),
        ("report: sign (agent)", per_call_us(
            lambda: envelope.sign_report(keys, rig="alpha", kind="telemetry", payload=payload, seq=1), args.n,
            args.repeat)),
        ("report: plain JSON receive (baseline)", per_call_us(lambda: json.loads(old_wire), args.n, args.repeat)),
        ("report: check + parse (panel worker)", per_call_us(
            lambda: envelope.open_report(keys, rig="alpha", body=signed["body"], mac=signed["mac"]), args.n,
            args.repeat)),
        ("command: sign (panel)", per_call_us(
            lambda: envelope.sign_command(keys, task="agent.ping", rig="alpha", args={}, operation=1, ttl=120),
            args.n, args.repeat)),
        ("command: check + parse (agent)", per_call_us(
            lambda: envelope.open_command(keys, rig="alpha", task="agent.ping", **command), args.n, args.repeat)),
        ("secret: seal for one rig", per_call_us(lambda: envelope.seal(keys, "sk-bench-0123456789"), args.n // 4,
                                                 args.repeat)),
        ("secret: unseal on the rig", per_call_us(lambda: envelope.unseal(keys, spec), args.n // 4, args.repeat)),
        ("keys from a token (HKDF x3, uncached)", per_call_us(lambda: envelope.derive_keys.__wrapped__(TOKEN),
                                                              args.n // 4, args.repeat)),
    ]
    print(f"8-GPU telemetry report, {len(signed['body'])} bytes signed ({len(old_wire)} bytes before); "
          f"medians of {args.repeat} runs")
    for label, us in rows:
        print(f"{label:42s} {us:8.1f} µs")
    base_send, sign, base_recv, check = (us for _label, us in rows[:4])
    print(f"{'ratio sign / plain send':42s} {sign / base_send:8.1f} x")
    print(f"{'ratio check / plain receive':42s} {check / base_recv:8.1f} x")
    budget = 1e6 / 2000 * 8  # the ingest target: 2,000 GPU samples/s = 250 8-GPU reports/s
    print(f"{'check as a share of the ingest budget':42s} {check / budget * 100:8.2f} %  (4,000 µs per 8-GPU report)")


if __name__ == "__main__":
    main()
