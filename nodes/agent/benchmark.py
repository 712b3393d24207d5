"""A throughput sweep against one llama-server: 1, 2, 4, … streams up to its parallel slots. Plain Python, no Django.

Each stream is `POST /completion` with `"stream": true`: the native endpoint takes the prompt as token ids (so
every stream's prompt is exactly `prompt_tokens` long and distinct, with no chat template in between), honours
`cache_prompt: false` and `ignore_eos: true` (every stream generates exactly `gen_tokens`), and its final chunk
carries llama-server's own `timings` (prompt and generation tok/s measured inside the server) on every build,
which /v1/chat/completions does not. Time to first token is measured here, from sending the request to the first
streamed token.

Recommended concurrent sessions (RULE below): the largest step whose mean per-stream generation stays at least
half of the single stream's and at least `min_stream_tps`, and whose aggregate is higher than every smaller
step's. A step where more streams stop adding throughput, or where each stream becomes too slow for a chat, ends
the useful range.
"""

import http.client
import json
import statistics
import threading
import time
from urllib.parse import urlsplit

RULE = ("the most concurrent streams at which each stream still generates at least half as fast as a single "
        "stream alone and at least the floor, and the aggregate is still higher than at every smaller step")

DEFAULTS = {"prompt_tokens": 512, "gen_tokens": 128, "min_stream_tps": 10.0, "max_concurrency": None}
LIMITS = {"prompt_tokens": (1, 16384), "gen_tokens": (1, 4096), "min_stream_tps": (0, 10_000),
          "max_concurrency": (1, 256)}
STREAM_TIMEOUT = 300.0  # seconds one request may take; a rig that slow has no useful throughput anyway


class BenchmarkError(Exception):
    """Why the sweep could not run or finish, in words for the provider."""


def check_request(request, parallel, ctx_size):
    """The request's numbers, checked and with defaults filled in; raises BenchmarkError."""
    if not isinstance(request, dict):
        raise BenchmarkError("the benchmark request must be an object")
    unknown = set(request) - set(DEFAULTS)
    if unknown:
        raise BenchmarkError(f"unknown benchmark setting(s): {', '.join(sorted(unknown))}")
    clean = dict(DEFAULTS)
    for key, value in request.items():
        if value is None and key == "max_concurrency":
            continue
        lo, hi = LIMITS[key]
        whole = key != "min_stream_tps"
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
            raise BenchmarkError(f"{key} must be a {'whole ' if whole else ''}number")
        if not lo <= value <= hi:
            raise BenchmarkError(f"{key} must be between {lo} and {hi} (got {value})")
        clean[key] = value
    slot = ctx_size // parallel
    if clean["prompt_tokens"] + clean["gen_tokens"] > slot:
        raise BenchmarkError(f"prompt {clean['prompt_tokens']} + generation {clean['gen_tokens']} tokens do not fit a "
                             f"slot of {slot} tokens (ctx-size {ctx_size} / parallel {parallel})")
    return clean


def fitted_defaults(parallel, ctx_size):
    """DEFAULTS shrunk to fit one slot (ctx-size ÷ parallel): a small slot gets shorter prompts, in the same 4:1."""
    slot = ctx_size // parallel
    total = DEFAULTS["prompt_tokens"] + DEFAULTS["gen_tokens"]
    if total <= slot:
        return {"prompt_tokens": DEFAULTS["prompt_tokens"], "gen_tokens": DEFAULTS["gen_tokens"]}
    gen = max(1, slot * DEFAULTS["gen_tokens"] // total)
    return {"prompt_tokens": max(1, slot - gen - 1), "gen_tokens": gen}


def levels(parallel, max_concurrency=None):
    """1, 2, 4, … below the slot count, then the slot count itself: [1, 2, 4, 8, 16, 22] for 22 slots."""
    top = min(parallel, max_concurrency or parallel)
    steps, n = [], 1
    while n < top:
        steps.append(n)
        n *= 2
    return steps + [top]


def recommend(steps, min_stream_tps):
    """(recommended sessions, why) by RULE, from the steps' concurrency, per-stream and aggregate tok/s."""
    if not steps:
        return None, "no steps"
    single = steps[0]["per_stream_tps"]
    if single < min_stream_tps:
        return 1, f"even one stream generates only {single:.1f} tok/s, under the floor of {min_stream_tps:g} tok/s"
    best, best_aggregate = steps[0], steps[0]["aggregate_tps"]
    for step in steps[1:]:
        if step["per_stream_tps"] < max(single / 2, min_stream_tps):
            break
        if step["aggregate_tps"] <= best_aggregate:
            break
        best, best_aggregate = step, step["aggregate_tps"]
    return best["concurrency"], (f"{best['concurrency']} streams: {best['per_stream_tps']:.1f} tok/s each, "
                                 f"{best['aggregate_tps']:.1f} tok/s together")


def bytes_per_token(facts, file_size):
    """(bytes of weights read for each generated token, how that was counted), for the decode roofline. With the
    header's per-tensor sizes (gguf_facts): every layer, the output layer and the rest, but not the embedding table,
    of which a token reads one row (unless the output is tied to it). Otherwise the file less its header."""
    facts = facts or {}
    layers = facts.get("layer_bytes")
    parts = [facts.get(key) for key in ("output_bytes", "other_bytes", "token_embd_bytes")]
    if (isinstance(layers, list) and layers and all(isinstance(n, int) and n >= 0 for n in layers + parts)
            and facts.get("tensors_complete", True)):
        output, other, embd = parts
        read = sum(layers) + output + other + (embd if facts.get("output_tied") else 0)
        if 0 < read <= file_size:
            return read, "every layer and the output layer, from the file's header; the embedding table is only looked up"
    header = facts.get("header_bytes")
    if isinstance(header, int) and 0 < header < file_size:
        return file_size - header, "the file less its header"
    return file_size, "the file's size"


class Client:
    """Requests to one server on the rig, with its API key as a Bearer token when it has one."""

    def __init__(self, base_url, api_key="", timeout=STREAM_TIMEOUT):
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise BenchmarkError(f"{base_url!r} is not an http://host:port address")
        self.host, self.port, self.timeout = parts.hostname, parts.port, timeout
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def _connection(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def get_json(self, path):
        return self._json("GET", path, None, 1024 * 1024)

    def post_json(self, path, data):
        return self._json("POST", path, json.dumps(data), 16 * 1024 * 1024)

    def _json(self, method, path, body, limit):
        connection = self._connection()
        try:
            connection.request(method, path, body=body, headers=self.headers)
            response = connection.getresponse()
            data = response.read(limit)
            if response.status != 200:
                raise BenchmarkError(f"{method} {path} answered HTTP {response.status}: "
                                     f"{data[:200].decode(errors='replace')}")
            return json.loads(data)
        finally:
            connection.close()

    def stream(self, tokens, gen_tokens):
        """One streamed completion: {ttft_ms, prompt_n, prompt_tps, gen_n, gen_tps, total_ms}."""
        body = {"prompt": tokens, "n_predict": gen_tokens, "stream": True, "cache_prompt": False,
                "ignore_eos": True, "temperature": 0}
        connection = self._connection()
        started = time.perf_counter()
        first = None
        timings = None
        try:
            connection.request("POST", "/completion", body=json.dumps(body), headers=self.headers)
            response = connection.getresponse()
            if response.status != 200:
                raise BenchmarkError(f"POST /completion answered HTTP {response.status}: "
                                     f"{response.read(300).decode(errors='replace')}")
            for raw in response:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                chunk = json.loads(line[5:])
                if first is None and not chunk.get("stop"):
                    first = time.perf_counter()
                if chunk.get("stop"):
                    timings = chunk.get("timings")
                    break
        finally:
            connection.close()
        ended = time.perf_counter()
        if not isinstance(timings, dict):
            raise BenchmarkError("the server's stream ended without its timings")
        return {
            "ttft_ms": round(((first or ended) - started) * 1000, 1),
            "prompt_n": int(timings.get("prompt_n", 0)),
            "prompt_tps": round(float(timings.get("prompt_per_second") or 0), 2),
            "gen_n": int(timings.get("predicted_n", 0)),
            "gen_tps": round(float(timings.get("predicted_per_second") or 0), 2),
            "total_ms": round((ended - started) * 1000, 1),
        }


def prompts(client, count, length):
    """`count` distinct prompts of exactly `length` token ids: windows over the server's own tokenisation of a text
    long enough, so every id is one its vocabulary has."""
    words = " ".join(f"item {i} of the list, then" for i in range(count + length))
    tokens = client.post_json("/tokenize", {"content": words, "add_special": False}).get("tokens") or []
    tokens = [t if isinstance(t, int) else t.get("id") for t in tokens]
    if len(tokens) < count + length:
        raise BenchmarkError(f"the server tokenised the benchmark text into {len(tokens)} tokens; "
                             f"need {count + length}")
    return [tokens[i:i + length] for i in range(count)]


def run_step(client, concurrency, prompt_list, gen_tokens, power_meter=None):
    """`concurrency` streams at once; per stream and aggregate figures, and the power drawn meanwhile."""
    results, errors = [None] * concurrency, []
    barrier = threading.Barrier(concurrency)

    def one(i):
        try:
            barrier.wait(timeout=30)
            results[i] = client.stream(prompt_list[i], gen_tokens)
        except Exception as exc:  # any stream's failure fails the step, with its reason
            errors.append(exc)

    meter = power_meter() if power_meter else None
    if meter is not None:
        meter.start()
    threads = [threading.Thread(target=one, args=(i,), name=f"bench-{i}", daemon=True) for i in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    power = meter.stop() if meter is not None else None
    if errors:
        exc = errors[0]
        raise exc if isinstance(exc, BenchmarkError) else BenchmarkError(f"a stream failed: {exc}")
    generated = sum(r["gen_n"] for r in results)
    return {
        "concurrency": concurrency,
        "wall_s": round(wall, 3),
        "generated": generated,
        "aggregate_tps": round(generated / wall, 2) if wall > 0 else 0.0,
        "per_stream_tps": round(statistics.fmean(r["gen_tps"] for r in results), 2),
        "slowest_stream_tps": min(r["gen_tps"] for r in results),
        "prompt_tps": round(statistics.fmean(r["prompt_tps"] for r in results), 2),
        "ttft_ms": round(statistics.fmean(r["ttft_ms"] for r in results), 1),
        "ttft_max_ms": max(r["ttft_ms"] for r in results),
        "power": power,
        "power_w": round(sum(g["avg_w"] for g in power), 1) if power else None,
    }


def run_sweep(base_url, api_key, request, parallel, power_meter=None, on_step=None, client=None, deadline=None):
    """The whole sweep. `request` is check_request()'s output; `power_meter` makes a probe.PowerMeter (or None on a
    rig without NVML); `on_step(done, total, partial)` is called after each step. Returns the result. Past
    `deadline` (time.monotonic()) no further step starts: BenchmarkError says how far it got."""
    client = client or Client(base_url, api_key)
    steps_wanted = levels(parallel, request.get("max_concurrency"))
    prompt_list = prompts(client, steps_wanted[-1], request["prompt_tokens"])
    try:
        build_info = str(client.get_json("/props").get("build_info") or "")[:200]
    except (BenchmarkError, OSError, ValueError):
        build_info = ""  # older servers lack /props; the panel has the build's version anyway
    client.stream(prompt_list[0][:8], 4)  # warm-up: the first request pays one-time costs (allocations, graphs)
    steps = []
    result = {"parameters": {**request, "parallel": parallel, "levels": steps_wanted}, "steps": steps,
              "build_info": build_info, "rule": RULE}
    for done, concurrency in enumerate(steps_wanted, 1):
        if deadline is not None and time.monotonic() > deadline:
            raise BenchmarkError(f"stopped after {done - 1} of {len(steps_wanted)} steps: the sweep ran out of time; "
                                 "try fewer prompt or generated tokens")
        steps.append(run_step(client, concurrency, prompt_list, request["gen_tokens"], power_meter))
        if on_step is not None:
            on_step(done, len(steps_wanted), result)
    result["recommended_sessions"], result["recommended_why"] = recommend(steps, request["min_stream_tps"])
    return result
