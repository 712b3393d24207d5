"""Click → healthy through the panel and a real agent, vs the same llama-server command launched by hand, in the
same run; and the time to rebuild the same llama.cpp ref on a rig.

    .venv/bin/python bench/hosting.py                 # 5 launches each way, then one rebuild
    .venv/bin/python bench/hosting.py --launches 3 --skip-rebuild

"Click" is the operator's POST to start a deployment; "healthy" is the moment the panel's Operation row says
succeeded (the agent saw /health answer 200 and its report went through Redis and the panel worker).
"By hand" is Popen of the identical argument list, then polling /health every 20 ms.
"""

import argparse
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _django  # noqa: E402



def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5) as response:
            return response.status == 200
    except OSError:
        return False


def by_hand(args, port):
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while not healthy(port):
        if proc.poll() is not None:
            raise SystemExit(f"llama-server exited {proc.returncode}")
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    proc.terminate()
    proc.wait()
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launches", type=int, default=5)
    parser.add_argument("--skip-rebuild", action="store_true")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=1024)
    args = parser.parse_args()

    workdir = _django.setup()
    from django.contrib.auth.models import User
    from django.test import Client

    from hosting.models import Build, Deployment
    from models_catalog.models import RigFile
    from nodes.agent import serverspec
    from nodes.models import Operation
    from tests import llama
    from tests.gguf_model import write_tiny_llama

    binary = llama.server_binary()
    # Not the 0.6 MB test model: one that takes llama-server a moment to load, as a real one does (longer).
    model = write_tiny_llama(workdir / "bench.gguf", n_layers=args.layers, width=args.width, heads=16, kv_heads=8,
                             context=2048)
    rig = _django.PanelWithRig(workdir, agent_env={"MORPHEUS_CCACHE_DIR": str(llama.CCACHE_DIR)})
    node = rig.node
    user = User.objects.create_superuser("bench", password="bench-password-1")
    from django.conf import settings

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    client = Client()
    client.force_login(user)
    try:
        build = Build.objects.create(node=node, status=Build.READY, adopted=True, binary_path=str(binary),
                                     source=str(binary))
        rig_file = RigFile.objects.create(node=node, path=str(model), size=model.stat().st_size)
        port = free_port()
        deployment = Deployment.objects.create(node=node, name="bench", model_file=rig_file, build=build, port=port,
                                               ctx_size=1024, n_gpu_layers=0, parallel=1, flash_attn="off",
                                               desired_state=Deployment.STOPPED)
        hand_args = serverspec.launch_args(deployment.spec())

        panel_times, hand_times = [], []
        for _ in range(args.launches):  # interleaved, so both see the same machine
            hand_times.append(by_hand(hand_args, port))
            started = time.perf_counter()
            client.post(f"/deployments/{deployment.pk}/launch/")
            op = Operation.objects.filter(kind=Operation.LAUNCH).order_by("-pk").first()
            done = _django.wait_until(lambda: Operation.objects.filter(pk=op.pk, status__in=Operation.TERMINAL).first(),
                              120, "the launch")
            panel_times.append(time.perf_counter() - started)
            if done.status != Operation.SUCCEEDED:
                raise SystemExit(f"launch failed: {done.message}")
            client.post(f"/deployments/{deployment.pk}/stop/")
            stop = Operation.objects.filter(kind=Operation.STOP).order_by("-pk").first()
            _django.wait_until(lambda: Operation.objects.filter(pk=stop.pk, status__in=Operation.TERMINAL).exists(), 60, "stop")
            _django.wait_until(lambda: not healthy(port), 30, "port released")
        hand, panel = statistics.median(hand_times), statistics.median(panel_times)
        print(f"model: {model.stat().st_size / 1e6:.1f} MB llama, CPU, {args.launches} launches each way, medians")
        print(f"by hand (Popen + poll /health)   : {hand * 1000:7.1f} ms   runs {[round(t * 1000) for t in hand_times]}")
        print(f"panel (click → op succeeded)      : {panel * 1000:7.1f} ms   runs {[round(t * 1000) for t in panel_times]}")
        print(f"ratio panel / by hand             : {panel / hand:7.2f}   (target <= 1.3)")

        if not args.skip_rebuild:
            source = str(llama.source_repo())
            for attempt in ("first build on this rig (ccache warm from the test cache)", "rebuild of the same ref"):
                started = time.perf_counter()
                client.post("/rigs/bench-rig/builds/", {"build-source": source, "build-ref": llama.TAG,
                                                        "build-backend": "cpu"})
                b = Build.objects.filter(node=node, adopted=False).order_by("-pk").first()
                done = _django.wait_until(lambda: Build.objects.filter(pk=b.pk, status__in=["ready", "failed"]).first(),
                                  1800, "the build")
                print(f"{attempt:58}: {time.perf_counter() - started:6.1f} s  ({done.status}, agent says "
                      f"{done.duration} s)  target for the rebuild <= 30 s")
    finally:
        rig.stop()


if __name__ == "__main__":
    main()
