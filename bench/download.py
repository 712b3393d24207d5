"""Download throughput through a real rig agent vs curl from the same local server, and bytes fetched again
after the agent is killed mid-file.

    .venv/bin/python bench/download.py              # 1 GiB file, 3 runs each
    .venv/bin/python bench/download.py --mib 256 --runs 2

The server is the Hub stand-in of the tests (tests/hubstub.py) on 127.0.0.1. The agent run is the whole path a
provider's click takes on the rig: the `agent.download_model` task on the rig's queue, the metadata HEAD, the
download into the .part file with its running sha256, the check against the Hub's sha256, the reports to the
panel worker. Its time is from sending the task until the panel's Operation row says succeeded.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _django  # noqa: E402

MiB = 1024 * 1024


def make_file(path, mib):
    block = os.urandom(8 * MiB)
    with open(path, "wb") as fh:
        for i in range(mib // 8):
            fh.write(i.to_bytes(8, "little") + block[8:])
    return path



def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--link-mib", type=float, default=None,
                        help="cap the server at this many MiB/s, like a real link (e.g. 119 for 1 Gbit/s)")
    args = parser.parse_args()

    workdir = _django.setup()
    from nodes.agent import protocol
    from nodes.channel import send_command
    from nodes.models import Operation
    from tests.hubstub import Hub

    served_path = make_file(workdir / "big.gguf", args.mib)
    size = served_path.stat().st_size
    hub = Hub().start()
    hub_file = hub.add_file("bench/Big-GGUF", "big-Q8_0.gguf", served_path)
    hub_file.rate = args.link_mib * MiB if args.link_mib else None
    url = f"{hub.url}/bench/Big-GGUF/resolve/main/big-Q8_0.gguf"
    request = {"request": {"repo_id": "bench/Big-GGUF", "files": [{"filename": "big-Q8_0.gguf"}], "endpoint": hub.url}}
    rig = _django.PanelWithRig(workdir, agent_env={"MORPHEUS_DOWNLOAD_DISK_MARGIN_MB": "16"})
    node, data_dir = rig.node, rig.data_dir
    try:
        dest = data_dir / "models" / "bench__Big-GGUF" / "big-Q8_0.gguf"

        def curl_once():
            out = workdir / "curl.out"
            started = time.perf_counter()
            subprocess.run(["curl", "-sS", "-o", str(out), url], check=True)
            elapsed = time.perf_counter() - started
            out.unlink()
            return elapsed

        def curl_verified_once():
            """What the agent guarantees, by hand: fetch, check the sha256, make it durable."""
            out = workdir / "curl.out"
            started = time.perf_counter()
            subprocess.run(["curl", "-sS", "-o", str(out), url], check=True)
            digest = subprocess.run(["sha256sum", str(out)], check=True, capture_output=True, text=True).stdout
            subprocess.run(["sync", str(out)], check=True)
            elapsed = time.perf_counter() - started
            assert digest.split()[0] == hub_file.sha256
            out.unlink()
            return elapsed

        def agent_once():
            dest.unlink(missing_ok=True)
            op = Operation.objects.create(node=node, kind=Operation.DOWNLOAD_MODEL, target="bench")
            started = time.perf_counter()
            send_command(node, protocol.AGENT_DOWNLOAD_MODEL, request, operation=op.pk)
            done = _django.wait_until(lambda: Operation.objects.filter(pk=op.pk, status__in=Operation.TERMINAL).first(),
                              600, "the agent's download")
            elapsed = time.perf_counter() - started
            if done.status != Operation.SUCCEEDED:
                raise SystemExit(f"download failed: {done.message}")
            return elapsed, done.result["seconds"]

        curl_times, verified_times, agent_times, agent_inner = [], [], [], []
        for _ in range(args.runs):  # interleaved so all see the same machine load
            curl_times.append(curl_once())
            verified_times.append(curl_verified_once())
            total, inner = agent_once()
            agent_times.append(total)
            agent_inner.append(inner)
        mib = size / MiB
        curl_rate = mib / statistics.median(curl_times)
        agent_rate = mib / statistics.median(agent_times)
        link = f", link capped at {args.link_mib:g} MiB/s" if args.link_mib else ", loopback uncapped"
        print(f"file: {mib:.0f} MiB from {hub.url} (Python stand-in server{link}), {args.runs} runs each, medians")
        print(f"curl                       : {curl_rate:8.1f} MiB/s  ({statistics.median(curl_times):.2f} s)")
        print(f"agent, click to succeeded  : {agent_rate:8.1f} MiB/s  ({statistics.median(agent_times):.2f} s; "
              f"agent's own download+verify {statistics.median(agent_inner):.2f} s)")
        verified_rate = mib / statistics.median(verified_times)
        print(f"curl + sha256sum + sync    : {verified_rate:8.1f} MiB/s  ({statistics.median(verified_times):.2f} s)")
        print(f"ratio agent/curl           : {agent_rate / curl_rate:8.2f}  (target >= 0.90)")
        print(f"ratio agent/(curl+verify)  : {agent_rate / verified_rate:8.2f}  (the same guarantees by hand)")

        # Kill the agent (SIGKILL) half way through, start it again, count what the server sends twice.
        dest.unlink(missing_ok=True)
        hub_file.rate = 64 * MiB
        hub_file.served = 0
        op = Operation.objects.create(node=node, kind=Operation.DOWNLOAD_MODEL, target="bench-kill")
        send_command(node, protocol.AGENT_DOWNLOAD_MODEL, request, operation=op.pk)
        _django.wait_until(lambda: (Operation.objects.get(pk=op.pk).progress_done or 0) >= size // 2, 600, "half the file")
        rig.agent.kill()
        at_kill = hub_file.served
        hub_file.rate = args.link_mib * MiB if args.link_mib else None
        rig.start_agent()
        done = _django.wait_until(lambda: Operation.objects.filter(pk=op.pk, status__in=Operation.TERMINAL).first(),
                          600, "the resumed download")
        again = hub_file.served - size
        print(f"killed at {at_kill / MiB:.0f} MiB served; resumed from {done.result.get('resumed_from', 0) / MiB:.1f} MiB;"
              f" fetched again: {again / MiB:.2f} MiB (limit 16 MiB); outcome {done.status}")
    finally:
        rig.stop()
        hub.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
