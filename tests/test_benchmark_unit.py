"""Benchmarks without the agent: the sweep against a real llama-server (tiny model), the recommended-sessions rule,
memory bandwidth and power from the fake NVML, roofline and published references, and the economics arithmetic."""

import json
import subprocess
import sys
import time
from decimal import Decimal
from fractions import Fraction

import pytest

from hosting import economics
from hosting.benchmarks import BadResult, clean_result, history_chart, references, roofline
from nodes.agent import benchmark
from nodes.agent.probe import PowerMeter, probe_hardware, table_bandwidth
from tests import llama
from tests.gguf_model import write_tiny_llama
from tests.harness import FAKES, wait_until
from tests.helpers import free_port, make_node
from tests.test_probe import fake_nvml  # noqa: F401  (a fixture)

FLOOR = 10_000_000_000


# --- economics: W, kWh, $, MOR, wei/s ---------------------------------------------------------------------------

def test_costs_of_a_3090_rig_with_its_planned_build_are_exact():
    # 350 W at $0.15 per kWh, a $2,400 build over 24 months, MOR at $10, 800 tok/s over 8 sessions.
    c = economics.costs(watts=Decimal("350"), usd_per_kwh=Decimal("0.15"), mor_usd=Decimal("10"),
                        aggregate_tps=Decimal("800"), sessions=8, hardware_usd=Decimal("2400"), months=24)
    assert c.kwh_per_hour == Fraction(35, 100)  # kWh per hour
    assert c.energy_usd_per_hour == Fraction(21, 400)  # $0.0525 per hour
    assert c.hardware_usd_per_hour == Fraction(2400, 24 * 730)  # $0.136986… per hour
    assert c.usd_per_hour == Fraction(5533, 29200)  # $0.189486… per hour
    assert c.tokens_per_hour == 2_880_000
    assert c.usd_per_million_tokens == Fraction(5533, 84096)  # $0.0658 per million tokens
    # ceil(5533/29200 $/h ÷ 3600 s ÷ $10 per MOR × 10^18 wei ÷ 8 sessions) = ceil(657938546423.13…)
    assert c.cost_wei_per_second == c.bid_wei_per_second == 657_938_546_424
    assert isinstance(c.bid_wei_per_second, int) and not c.at_floor
    assert economics.decimal(c.usd_per_million_tokens, 4) == Decimal("0.0658")
    assert economics.mor_text(c.bid_wei_per_second) == "0.000000657938546424"  # MOR per second, every digit


def _bid(watts, usd_per_kwh="0.001", mor_usd="1", sessions=1):
    return economics.costs(watts=Decimal(watts), usd_per_kwh=Decimal(usd_per_kwh), mor_usd=Decimal(mor_usd),
                           aggregate_tps=Decimal("10"), sessions=sessions)


def test_the_bid_is_exact_at_the_floor_and_never_below_it():
    # 36 W × $0.001 per kWh = $0.000036 per hour = $1e-8 per second = 10^10 wei/s at $1 per MOR: the floor exactly.
    at = _bid("36")
    assert (at.cost_wei_per_second, at.bid_wei_per_second, at.at_floor) == (FLOOR, FLOOR, True)
    assert economics.mor_text(at.bid_wei_per_second) == "0.00000001"
    above = _bid("36.0000036")  # one part in 10^7 more: 1,000 wei/s above the floor
    assert (above.bid_wei_per_second, above.at_floor) == (FLOOR + 1000, False)
    below = _bid("35.9999964")  # 1,000 wei/s under it: the floor applies
    assert (below.cost_wei_per_second, below.bid_wei_per_second, below.at_floor) == (FLOOR - 1000, FLOOR, True)
    idle = _bid("0")
    assert (idle.cost_wei_per_second, idle.bid_wei_per_second, idle.at_floor) == (0, FLOOR, True)


def test_the_bid_rounds_up_to_a_whole_wei_exactly_with_numbers_a_float_would_lose():
    # 10^10 × 10^6 ÷ 3 wei/s = 3,333,333,333,333,333.33…: a float cannot hold it; the bid rounds up.
    c = _bid("36", mor_usd="0.000001", sessions=3)
    assert c.bid_wei_per_second == 3_333_333_333_333_334
    assert _bid("36", sessions=3).bid_wei_per_second == FLOOR  # 3,333,333,334 wei/s is under the floor


def test_economics_refuses_floats_and_nonsense_and_says_when_nothing_was_generated():
    with pytest.raises(economics.EconomicsError, match="exact number"):
        economics.costs(watts=350.0, usd_per_kwh=Decimal("0.1"), mor_usd=Decimal("1"), aggregate_tps=1, sessions=1)
    with pytest.raises(economics.EconomicsError, match="MOR price must be above 0"):
        _bid("36", mor_usd="0")
    with pytest.raises(economics.EconomicsError, match="sessions"):
        _bid("36", sessions=0)
    with pytest.raises(economics.EconomicsError, match="at least 0"):
        _bid("-1")
    none = economics.costs(watts=Decimal(100), usd_per_kwh=Decimal("0.2"), mor_usd=Decimal(5), aggregate_tps=0,
                           sessions=1)
    assert none.usd_per_million_tokens is None and none.hardware_usd_per_hour is None
    assert none.usd_per_hour == Fraction(1, 50)  # 0.1 kWh per hour × $0.20


# --- the sweep's rules ---------------------------------------------------------------------------------------------

def test_levels_double_up_to_the_slots_and_always_end_there():
    assert benchmark.levels(1) == [1]
    assert benchmark.levels(4) == [1, 2, 4]
    assert benchmark.levels(22) == [1, 2, 4, 8, 16, 22]
    assert benchmark.levels(22, max_concurrency=5) == [1, 2, 4, 5]


def _steps(*rows):
    return [{"concurrency": c, "per_stream_tps": s, "aggregate_tps": a} for c, s, a in rows]


def test_recommended_sessions_follow_the_rule():
    # The published 3090 curve: 155 / 277 / 469 / 571 tok/s at 1 / 2 / 4 / 8 streams. At 8 each stream gets ~71 tok/s,
    # under half of 155: 4 sessions (117 tok/s each); with a slightly faster 8th step it would be 8.
    assert benchmark.recommend(_steps((1, 155, 155), (2, 138, 277), (4, 117, 469), (8, 71, 571)), 10)[0] == 4
    assert benchmark.recommend(_steps((1, 155, 155), (2, 138, 277), (4, 117, 469), (8, 78, 620)), 10)[0] == 8
    # Each stream under half the single stream's speed at 8: stop at 4.
    assert benchmark.recommend(_steps((1, 100, 100), (2, 90, 180), (4, 60, 240), (8, 40, 320)), 10)[0] == 4
    # The aggregate stops growing at 4 (a CPU that is already saturated): 2.
    assert benchmark.recommend(_steps((1, 30, 30), (2, 28, 56), (4, 16, 56)), 10)[0] == 2
    # Under the usable floor per stream at 2: 1; and a single stream under the floor is still 1, with the reason.
    assert benchmark.recommend(_steps((1, 30, 30), (2, 16, 32)), 20)[0] == 1
    sessions, why = benchmark.recommend(_steps((1, 5, 5), (2, 4, 8)), 10)
    assert sessions == 1 and "under the floor of 10 tok/s" in why


def test_the_request_is_checked_against_the_slots():
    assert benchmark.check_request({}, parallel=4, ctx_size=8192)["prompt_tokens"] == 512
    for request, error in [({"prompt_tokens": 0}, "between 1 and"), ({"gen_tokens": "9"}, "whole number"),
                           ({"gen_tokens": True}, "whole number"), ({"rounds": 3}, "unknown benchmark setting"),
                           ({"prompt_tokens": 2000, "gen_tokens": 100}, "do not fit a slot of 2048 tokens"),
                           ([1], "must be an object")]:
        with pytest.raises(benchmark.BenchmarkError, match=error):
            benchmark.check_request(request, parallel=4, ctx_size=8192)


def test_a_rig_result_is_rebuilt_from_known_fields_and_bounded():
    good = {"steps": [{"concurrency": 1, "wall_s": 1.0, "generated": 16, "aggregate_tps": 16.0, "per_stream_tps": 16.0,
                       "slowest_stream_tps": 16.0, "prompt_tps": 100.0, "ttft_ms": 20.0, "ttft_max_ms": 20.0,
                       "power_w": None, "power": [{"evil": "<script>"}], "extra": "x" * 10}],
            "parameters": {"prompt_tokens": 32, "gen_tokens": 16, "min_stream_tps": 1.0}, "recommended_sessions": 1,
            "build_info": "b1-abc"}
    clean = clean_result(good, parallel=2)
    assert set(clean["steps"][0]) == {"concurrency", "wall_s", "generated", "aggregate_tps", "per_stream_tps",
                                      "slowest_stream_tps", "prompt_tps", "ttft_ms", "ttft_max_ms", "power_w"}
    for change, error in [({"recommended_sessions": 3}, "outside 1..2"),
                          ({"steps": good["steps"] * 2}, "rise in concurrency"),
                          ({"steps": good["steps"] * 13}, "more than 12"),
                          ({"steps": [{**good["steps"][0], "aggregate_tps": float("nan")}]}, "outside"),
                          ({"steps": [{**good["steps"][0], "concurrency": 3}]}, "outside 1..2"),
                          ({"steps": []}, "no steps")]:
        with pytest.raises(BadResult, match=error):
            clean_result({**good, **change}, parallel=2)


# --- NVML: memory bandwidth and power ----------------------------------------------------------------------------

def test_memory_bandwidth_comes_from_nvml_else_from_the_table_else_nothing(fake_nvml, tmp_path):
    fake_nvml([{"name": "NVIDIA GeForce RTX 3090", "vram_gib": 24, "power_limit_w": 350, "bus_width": 384,
                "mem_clock_mhz": 9751},
               {"name": "NVIDIA H100 PCIe", "vram_gib": 80, "power_limit_w": 350},  # NVML says NotSupported
               {"name": "NVIDIA Mystery 9000", "vram_gib": 8, "power_limit_w": 100}])
    gpus = probe_hardware(tmp_path)["gpus"]
    assert [(g["mem_bandwidth_gbs"], g["mem_bandwidth_source"]) for g in gpus] == [
        (936.1, "nvml"), (2000, "table"), (None, None)]
    assert table_bandwidth("NVIDIA GeForce RTX 3090 Ti") == 1008
    assert table_bandwidth("NVIDIA A100-SXM4-80GB") == 2039 and table_bandwidth("NVIDIA A100-PCIE-40GB") == 1555
    assert table_bandwidth("NVIDIA L4") == 300 and table_bandwidth("NVIDIA L40S") == 864
    assert table_bandwidth("NVIDIA A10") == 600 and table_bandwidth("NVIDIA H200") == 4800


def test_the_power_meter_averages_each_gpu_and_is_none_without_a_driver(fake_nvml):
    fake_nvml("2x3090")
    meter = PowerMeter(interval=0.02).start()
    wait_until(lambda: meter._counts.get(1, 0) >= 3, timeout=5, interval=0.01, message="a few readings")
    power = meter.stop()
    assert [g["index"] for g in power] == [0, 1] and all(30 <= g["avg_w"] <= 350 for g in power)
    assert power[0]["name"] == "NVIDIA GeForce RTX 3090" and power[0]["samples"] >= 3
    fake_nvml("nodriver")
    assert PowerMeter().start().stop() is None


# --- roofline and references (panel side) ------------------------------------------------------------------------

def _deployment(hardware, path, size, facts=None, **fields):
    from hosting.models import Build, Deployment
    from models_catalog.models import RigFile

    node, _ = make_node("bench", hardware=hardware)
    rig_file = RigFile.objects.create(node=node, path=path, size=size, facts=facts or {})
    build = Build.objects.create(node=node, status=Build.READY, binary_path="/opt/llama-server")
    return Deployment.objects.create(node=node, name="d", model_file=rig_file, build=build, port=8080, **fields)


GPU_3090 = {"index": 0, "name": "NVIDIA GeForce RTX 3090", "mem_bandwidth_gbs": 936.0}
LLAMA_8B = {"architecture": "llama", "parameters": 8_030_261_248, "file_type": "Q4_K_M", "header_bytes": 8_000_000}


@pytest.mark.django_db
def test_roofline_is_bandwidth_over_weight_bytes_and_the_3090_references_match():
    size = 4_928_000_000  # 4.92 GB of weights after the 8 MB header
    one = _deployment({"gpus": [GPU_3090]}, "/m/Meta-Llama-3-8B-Instruct-Q4_K_M.gguf", size + 8_000_000, LLAMA_8B)
    line = roofline(one)
    assert line["bytes"] == size and line["tps"] == pytest.approx(936e9 / size)  # ≈ 190 tok/s
    assert [r["tps"] for r in references(one)] == [(115, 115)]
    one.model_file.facts = {**LLAMA_8B, "file_type": "Q4_0"}
    assert [r["tps"] for r in references(one)] == [(571, 584)]
    one.model_file.facts = {**LLAMA_8B, "parameters": 70_000_000_000}
    assert references(one) == []

    one.node.hardware = {"gpus": [GPU_3090, {**GPU_3090, "index": 1}]}
    one.model_file.facts = LLAMA_8B
    assert [r["tps"] for r in references(one)] == [(80, 80)]  # the seed's 2× 3090
    # Layer split runs the two cards in turn: the same roofline as one card, not twice it.
    assert roofline(one)["tps"] == pytest.approx(936e9 / size)
    one.tensor_split = "1,0"
    assert roofline(one)["gbs"] == [936.0]

    one.node.hardware = {"gpus": [{"index": 0, "name": "NVIDIA Mystery 9000"}]}
    assert "unknown" in roofline(one)["missing"] and references(one) == []
    one.n_gpu_layers = 0
    assert "runs on the CPU" in roofline(one)["missing"]


def test_a_token_reads_every_layer_and_the_output_but_one_row_of_the_embeddings():
    facts = {"layer_bytes": [100] * 4, "output_bytes": 50, "other_bytes": 2, "token_embd_bytes": 50,
             "output_tied": False, "tensors_complete": True, "header_bytes": 10}
    assert benchmark.bytes_per_token(facts, 1000)[0] == 452
    assert benchmark.bytes_per_token({**facts, "output_tied": True}, 1000)[0] == 502  # the output is the table
    assert benchmark.bytes_per_token({**facts, "tensors_complete": False}, 1000) == (990, "the file less its header")
    assert benchmark.bytes_per_token({}, 1000) == (1000, "the file's size")
    assert benchmark.bytes_per_token({**facts, "layer_bytes": ["x"]}, 1000)[0] == 990  # a hostile header: no


def test_the_history_chart_puts_the_oldest_left():
    class Run:
        def __init__(self, single, best):
            self.single_tps, self.best_aggregate_tps = single, best

    chart = history_chart([Run(100, 400), Run(50, 200)])  # newest first, as the page lists them
    assert chart["top"] == 400 and chart["count"] == 2
    assert chart["aggregate"] == "4.0,60.0 476.0,4.0"  # 200 tok/s left (the older), 400 right at the top
    assert history_chart([]) is None and history_chart([Run(100, 400)]) is None  # one run is in the table


# --- the sweep against a real llama-server ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench-server")
    model = write_tiny_llama(folder / "tiny-F32.gguf")
    port = free_port()
    key = "bench-secret-key-1"
    (folder / "key").write_text(key + "\n")
    log = open(folder / "server.log", "wb")
    process = subprocess.Popen([str(llama.server_binary()), "--model", str(model), "--host", "127.0.0.1", "--port",
                                str(port), "--ctx-size", "512", "--parallel", "2", "--n-gpu-layers", "0",
                                "--api-key-file", str(folder / "key"), "--no-webui"],
                               stdout=log, stderr=subprocess.STDOUT)
    from nodes.agent.supervisor import probe_health

    try:
        wait_until(lambda: probe_health("127.0.0.1", port) == "healthy", timeout=60, message="llama-server healthy")
        yield f"http://127.0.0.1:{port}", key
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def test_the_sweep_measures_each_step_against_a_real_server(tiny_server):
    url, key = tiny_server
    request = benchmark.check_request({"prompt_tokens": 32, "gen_tokens": 16, "min_stream_tps": 1.0}, 2, 512)
    seen = []
    result = benchmark.run_sweep(url, key, request, parallel=2, on_step=lambda d, t, r: seen.append((d, t)))
    assert seen == [(1, 2), (2, 2)]
    assert [s["concurrency"] for s in result["steps"]] == [1, 2]
    for step in result["steps"]:
        assert step["generated"] == 16 * step["concurrency"]  # ignore_eos: every stream generated all it was asked
        assert step["per_stream_tps"] > 0 and step["prompt_tps"] > 0 and step["aggregate_tps"] > 0
        assert 0 < step["ttft_ms"] <= step["ttft_max_ms"] < step["wall_s"] * 1000
        assert step["power"] is None and step["power_w"] is None  # no power meter: a CPU-only rig
    assert result["recommended_sessions"] in (1, 2) and result["parameters"]["levels"] == [1, 2]
    assert clean_result(result, parallel=2)["recommended"] == result["recommended_sessions"]


def test_the_sweep_stops_between_steps_past_its_deadline_and_says_how_far_it_got(tiny_server, monkeypatch):
    url, key = tiny_server
    request = benchmark.check_request({"prompt_tokens": 8, "gen_tokens": 4}, 2, 512)
    steps_run = []
    real_step = benchmark.run_step

    def slow_step(*args, **kwargs):  # each step "takes" an hour on the sweep's clock
        steps_run.append(1)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(benchmark, "run_step", slow_step)
    deadline = time.monotonic() + 30  # the first step starts well inside it
    real_monotonic = time.monotonic
    monkeypatch.setattr(benchmark.time, "monotonic", lambda: real_monotonic() + 3600 * len(steps_run))
    with pytest.raises(benchmark.BenchmarkError, match="stopped after 1 of 2 steps: the sweep ran out of time"):
        benchmark.run_sweep(url, key, request, parallel=2, deadline=deadline)
    assert len(steps_run) == 1


def test_the_sweep_fails_with_the_reason_without_the_key_or_without_a_server(tiny_server):
    url, _key = tiny_server
    request = benchmark.check_request({"prompt_tokens": 8, "gen_tokens": 4}, 2, 512)
    with pytest.raises(benchmark.BenchmarkError, match="HTTP 401"):
        benchmark.run_sweep(url, "wrong-key-123", request, parallel=2)
    with pytest.raises(OSError):
        benchmark.run_sweep(f"http://127.0.0.1:{free_port()}", "", request, parallel=1)
    with pytest.raises(benchmark.BenchmarkError, match="not an http://host:port"):
        benchmark.Client("file:///etc/passwd")


def test_the_default_lengths_shrink_to_fit_a_small_slot():
    assert benchmark.fitted_defaults(4, 8192) == {"prompt_tokens": 512, "gen_tokens": 128}
    small = benchmark.fitted_defaults(2, 512)  # 256-token slots
    assert small == {"prompt_tokens": 204, "gen_tokens": 51}
    assert benchmark.check_request(small, 2, 512) == {**benchmark.DEFAULTS, **small}


# --- the prepared GPU check (bench/gpu_check.py) -----------------------------------------------------------------

GPU_CHECK = [sys.executable, str(FAKES.parent.parent / "bench" / "gpu_check.py")]


def test_the_gpu_check_stops_at_once_without_a_gpu_and_runs_its_pipeline_on_the_cpu(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(FAKES), "FAKE_NVML": "nodriver", "HOME": str(tmp_path)}
    refused = subprocess.run(GPU_CHECK + ["--source", str(tmp_path)], capture_output=True, text=True, timeout=60,
                             env=env)
    assert refused.returncode == 1 and "no NVIDIA GPU here: no NVIDIA driver" in refused.stderr
    assert "building" not in refused.stdout
    llama.server_binary()  # built (and cached) before the script asks for it
    smoke = subprocess.run(GPU_CHECK + ["--cpu-smoke", "--parallel", "2", "--prompt", "32", "--gen", "8",
                                        "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")],
                           capture_output=True, text=True, timeout=120,
                           env={**env, "MORPHEUS_TEST_CACHE": str(llama.CACHE)})
    assert smoke.returncode == 0, smoke.stdout[-2000:] + smoke.stderr[-2000:]
    assert "step 2/2:   2 streams" in smoke.stdout and "recommended sessions" in smoke.stdout
    summary = json.loads((tmp_path / "out" / "result.json").read_text())
    assert summary["quant"] == "q4_0" and summary["roofline_tps"] is None  # a random Q4_0 model, on the CPU
    assert [s["generated"] for s in summary["result"]["steps"]] == [8, 16]
