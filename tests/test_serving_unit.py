"""Reading a llama-server's serving metrics and streaming one chat through it (nodes/agent/serving.py), and what the
panel accepts of them. A real llama-server is in tests/test_integration_serving.py; here a small HTTP server plays a
broken or hostile one, which a real server cannot be made to be."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nodes.agent import serving
from nodes.reports import ReportError, clean_telemetry

KEY = "sk-test-key-123456"

# What llama-server b0c1e57 answers on /metrics (tools/server/server-task.cpp to_metrics), shortened.
METRICS = """# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached tokens
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 120
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 300
llamacpp:n_decode_total 310
llamacpp:prompt_tokens_seconds 950.5
llamacpp:predicted_tokens_seconds 88.25
llamacpp:requests_processing 2
llamacpp:requests_deferred 1
llamacpp:n_busy_slots_per_decode 1.5
llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position="0"} 4
"""

SLOTS = [
    {"id": 0, "n_ctx": 128, "speculative": False, "is_processing": True, "id_task": 7, "n_prompt_tokens": 40,
     "next_token": [{"has_next_token": True, "n_remain": 10, "n_decoded": 20}]},
    {"id": 1, "n_ctx": 128, "speculative": False, "is_processing": False, "n_prompt_tokens": 500},
    {"id": 2, "n_ctx": 128, "speculative": False, "is_processing": False},
]


class FakeServer:
    """A local HTTP server answering each path with what the test sets: (status, body, delay)."""

    def __init__(self):
        self.routes, self.requests, self.pace = {}, [], 0.0  # pace: seconds between two pieces of a stream
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                outer.requests.append((self.command, self.path, dict(self.headers)))
                status, body, delay = outer.routes.get(self.path, (404, b"not found", 0))
                if delay:
                    time.sleep(delay)
                chunks = body if isinstance(body, list) else [body]
                self.send_response(status)
                self.send_header("Content-Type", "text/event-stream" if isinstance(body, list) else "text/plain")
                self.end_headers()
                for chunk in chunks:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    time.sleep(outer.pace)

            def do_GET(self):
                self._answer()

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._answer()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True  # a handler still sleeping does not hold up the teardown
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def set(self, path, body, status=200, delay=0):
        self.routes[path] = (status, body.encode() if isinstance(body, str) else body, delay)


@pytest.fixture
def fake():
    server = FakeServer()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


# --- parsing ----------------------------------------------------------------------------------------------------
def test_it_reads_the_known_llama_cpp_metrics_and_nothing_else():
    found = serving.parse_metrics(METRICS)
    assert found == {"prompt_tokens_total": 120, "tokens_predicted_total": 300, "n_decode_total": 310,
                     "prompt_tokens_seconds": 950.5, "predicted_tokens_seconds": 88.25, "requests_processing": 2,
                     "requests_deferred": 1, "n_busy_slots_per_decode": 1.5}


@pytest.mark.parametrize("text", [
    "", "garbage\n\x00\xff", "llamacpp:tokens_predicted_total", "llamacpp:tokens_predicted_total NaN",
    "llamacpp:tokens_predicted_total +Inf", "llamacpp:tokens_predicted_total -5",
    "llamacpp:tokens_predicted_total 1e300",
    "llamacpp:tokens_predicted_total abc", 'llamacpp:tokens_predicted_total{x="1"} 5', "other:tokens_predicted_total 5",
    b"\xff\xfe llamacpp:requests_deferred 5 \xff",
])
def test_it_skips_metrics_lines_it_cannot_trust(text):
    found = serving.parse_metrics(text)
    assert "tokens_predicted_total" not in found


def test_it_keeps_the_first_value_of_a_metric_a_server_repeats():
    assert serving.parse_metrics("llamacpp:requests_deferred 1\nllamacpp:requests_deferred 99\n") == {
        "requests_deferred": 1}


def test_it_counts_busy_slots_and_the_kv_cache_they_hold():
    # Slot 1 claims more cached tokens than its context: capped at its context.
    # Slot 0 is generating its 21st token; slot 1 finished (its tokens are in the server's counter already).
    assert serving.parse_slots(json.dumps(SLOTS)) == (1, 3, 40 + 128, 3 * 128, 20)


@pytest.mark.parametrize("body", [b"not json", b'{"slots": []}', b"[" * 100_000, json.dumps([{}] * 5000).encode()])
def test_it_refuses_slots_that_are_not_a_list_of_slots(body):
    with pytest.raises(serving.ServingError):
        serving.parse_slots(body)


def test_it_ignores_slot_entries_of_the_wrong_shape():
    slots = [1, "x", None, {"is_processing": "yes", "n_ctx": "128", "n_prompt_tokens": -4},
             {"is_processing": True, "n_ctx": float("inf"), "next_token": [{"n_decoded": "9"}]},
             {"is_processing": True, "next_token": {"n_decoded": 9}}, {"is_processing": True, "next_token": [1]}]
    assert serving.parse_slots(json.dumps(slots)) == (3, 4, 0, 0, 0)


# --- rates between readings -----------------------------------------------------------------------------------
def test_it_turns_counter_deltas_into_tokens_per_second():
    before = {"at": 10.0, "counters": {"generated": 100, "prompt": 50}}
    now = {"at": 12.0, "counters": {"generated": 300, "prompt": 50}}
    assert serving.rate(now, before, "generated") == 100.0
    assert serving.rate(now, before, "prompt") == 0.0
    assert serving.rate(now, None, "generated") is None  # a first reading has no rate
    restarted = {"at": 13.0, "counters": {"generated": 5}}
    assert serving.rate(restarted, now, "generated") is None  # counters started again
    assert serving.rate({"at": 12.0, "counters": now["counters"]}, now, "generated") is None


def test_it_reads_a_server_with_its_key_and_rates_a_second_reading(fake):
    fake.set("/metrics", METRICS)
    fake.set("/slots", json.dumps(SLOTS))
    clock = iter([100.0, 102.0])
    first, state = serving.read_server("127.0.0.1", fake.port, KEY, monotonic=lambda: next(clock))
    assert first["generated_tps"] is None and first["tokens_generated"] == 300 + 20
    assert (first["slots_busy"], first["slots_total"], first["kv_used"], first["kv_total"]) == (1, 3, 168, 384)
    assert (first["requests_processing"], first["requests_deferred"], first["busy_per_decode"]) == (2, 1, 1.5)
    # Two seconds later: slot 0 is 40 tokens further into its request, and other requests ended with 160 tokens.
    fake.set("/metrics", METRICS.replace("tokens_predicted_total 300", "tokens_predicted_total 460")
             .replace("prompt_tokens_total 120", "prompt_tokens_total 130"))
    fake.set("/slots", json.dumps(SLOTS).replace('"n_decoded": 20', '"n_decoded": 60'))
    second, _ = serving.read_server("127.0.0.1", fake.port, KEY, previous=state, monotonic=lambda: next(clock))
    assert (second["generated_tps"], second["prompt_tps"]) == (100.0, 5.0)
    assert (second["tokens_generated"], second["prompt_tokens"]) == (520, 130)
    assert all(headers.get("Authorization") == f"Bearer {KEY}" for _, _, headers in fake.requests)
    assert set(first) == set(serving.FIELDS)


@pytest.mark.parametrize("path, body, status, delay, error", [
    ("/metrics", "x" * (serving.MAX_METRICS_BYTES + 10), 200, 0, "/metrics sent more than"),
    ("/metrics", "no", 401, 0, "/metrics answered HTTP 401"),
    ("/metrics", "no", 501, 0, "/metrics answered HTTP 501"),  # a server launched without --metrics
    ("/metrics", METRICS, 200, 2.0, "/metrics did not answer (TimeoutError)"),
    ("/slots", "{}", 200, 0, "/slots did not send a list"),
])
def test_it_reports_a_server_it_cannot_read_in_words_within_its_timeout(fake, path, body, status, delay, error):
    fake.set("/metrics", METRICS)
    fake.set("/slots", json.dumps(SLOTS))
    fake.set(path, body, status=status, delay=delay)
    started = time.monotonic()
    with pytest.raises(serving.ServingError, match=error.replace("(", r"\(").replace(")", r"\)")):
        serving.read_server("127.0.0.1", fake.port, KEY, timeout=0.5)
    assert time.monotonic() - started < 1.5


def test_the_watch_keeps_one_reading_per_healthy_server_and_says_why_one_failed(fake):
    fake.set("/metrics", METRICS)
    fake.set("/slots", json.dumps(SLOTS))
    targets = [(1, "127.0.0.1", fake.port, KEY, 111), (2, "127.0.0.1", 1, KEY, 222)]  # port 1: nobody listens
    watch = serving.ServingWatch(lambda: targets, interval=1.0)
    first = watch.sample()
    assert [r["deployment"] for r in first] == [1, 2]
    assert first[0]["slots_total"] == 3 and "error" not in first[0]
    assert first[1]["error"].startswith("/metrics did not answer") and KEY not in json.dumps(first)
    fake.set("/metrics", METRICS.replace("tokens_predicted_total 300", "tokens_predicted_total 900"))
    second = watch.sample()
    assert second[0]["generated_tps"] > 0
    assert watch.readings() == second
    targets[0] = (1, "127.0.0.1", fake.port, KEY, 333)  # restarted: a new process, counters from zero
    assert watch.sample()[0]["generated_tps"] is None
    targets.clear()
    assert watch.sample() == [] and watch._previous == {}


def test_the_watch_reports_nothing_when_its_readings_are_old():
    now = [1000.0]
    watch = serving.ServingWatch(lambda: [], interval=1.0, clock=lambda: now[0])
    watch._readings, watch._taken = [{"deployment": 1, "at": 1000.0}], 1000.0
    assert watch.readings() == [{"deployment": 1, "at": 1000.0}]
    now[0] = 1004.0
    assert watch.readings() == []


# --- the panel's side of a reading ------------------------------------------------------------------------------
TELEMETRY = {"at": 1.0, "host": {"cpu_percent": 1.0, "ram_used": 1, "disk_free": 1}, "gpus": []}


def reading(**changes):
    base = {"deployment": 3, "at": 1.0, "generated_tps": 12.5, "prompt_tps": None, "tokens_generated": 300,
            "prompt_tokens": 120, "requests_processing": 1, "requests_deferred": 0, "busy_per_decode": 1.0,
            "slots_busy": 1, "slots_total": 4, "kv_used": 100, "kv_total": 512}
    return {**base, **changes}


def test_the_panel_takes_a_servers_reading_or_its_error():
    clean = clean_telemetry({**TELEMETRY, "servers": [reading(), {"deployment": 4, "at": 1.0, "error": "x" * 999}]})
    assert clean["servers"][0] == reading()
    assert clean["servers"][1] == {"deployment": 4, "at": 1.0, "error": "x" * serving.MAX_ERROR}
    assert "servers" not in clean_telemetry(TELEMETRY)  # an agent from before serving metrics


@pytest.mark.parametrize("servers, error", [
    ("nope", "servers must be a list"),
    ([reading()] * 2, "listed twice"),
    ([reading(deployment=i) for i in range(1, serving.MAX_SERVERS + 2)], "more than"),
    (["x"], "must be an object"),
    ([reading(deployment=0)], "deployment=0 is outside"),
    ([reading(generated_tps=float("nan"))], "not finite"),
    ([reading(generated_tps=-1)], "outside"),
    ([reading(slots_busy=5)], "more busy slots than slots"),
    ([reading(kv_used=1.5)], "whole number"),
    ([reading(tokens_generated="300")], "must be a number"),
    ([reading(error=["x"])], "error must be text"),
])
def test_the_panel_refuses_a_malformed_servers_list(servers, error):
    with pytest.raises(ReportError, match=error):
        clean_telemetry({**TELEMETRY, "servers": servers})


# --- one chat ---------------------------------------------------------------------------------------------------
def chunk(content=None, finish=None, **extra):
    delta = {} if content is None else {"content": content}
    return f"data: {json.dumps({'choices': [{'delta': delta, 'finish_reason': finish}], **extra})}\n\n".encode()


REQUEST = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8, "temperature": 0.5}


def test_it_streams_an_answer_piece_by_piece_with_the_servers_figures(fake):
    timings = {"prompt_n": 5, "predicted_n": 3, "predicted_per_second": 42.0, "evil": "x"}
    fake.set("/v1/chat/completions", [b": ping\n\n", chunk("Hel"), chunk("lo"), b"data: not json\n\n", chunk(" you"),
                                       chunk(None, "length", timings=timings),
                                       b'data: {"choices": [], "usage": {"completion_tokens": 3}}\n\n',
                                       b"data: [DONE]\n\n"])
    seen = []
    answer = serving.stream_chat("127.0.0.1", fake.port, KEY, REQUEST, on_text=lambda a: seen.append(a.text))
    assert answer.text == "Hello you"
    assert seen[:3] == ["Hel", "Hello", "Hello"]
    result = answer.result()
    assert result["finish_reason"] == "length" and result["usage"] == {"completion_tokens": 3}
    assert result["timings"] == {"prompt_n": 5, "predicted_n": 3, "predicted_per_second": 42.0}
    method, path, headers = fake.requests[-1]
    assert (method, path, headers["Authorization"]) == ("POST", "/v1/chat/completions", f"Bearer {KEY}")


def test_it_shows_the_servers_own_error_for_a_refused_chat(fake):
    error = {"error": {"code": 400, "message": "request (600 tokens) exceeds the available context size (256 tokens), "
                                               "try increasing it", "type": "exceed_context_size_error"}}
    fake.set("/v1/chat/completions", json.dumps(error), status=400)
    with pytest.raises(serving.ChatError) as caught:
        serving.stream_chat("127.0.0.1", fake.port, KEY, REQUEST)
    assert str(caught.value) == ("the server answered HTTP 400: request (600 tokens) exceeds the available context "
                                 "size (256 tokens), try increasing it")


def test_it_never_repeats_the_key_a_server_echoes_in_its_error(fake):
    fake.set("/v1/chat/completions", f"bad key {KEY}", status=401)
    with pytest.raises(serving.ChatError) as caught:
        serving.stream_chat("127.0.0.1", fake.port, KEY, REQUEST)
    assert KEY not in str(caught.value) and "HTTP 401" in str(caught.value)


def test_it_keeps_what_came_before_an_error_in_the_stream(fake):
    fake.set("/v1/chat/completions", [chunk("Hi"), b'data: {"error": {"message": "out of memory"}}\n\n'])
    with pytest.raises(serving.ChatError, match="the server stopped the answer: out of memory") as caught:
        serving.stream_chat("127.0.0.1", fake.port, KEY, REQUEST)
    assert caught.value.answer.text == "Hi"


def test_it_says_so_when_the_stream_ends_before_the_answer(fake):
    fake.set("/v1/chat/completions", [chunk("Hi")])
    with pytest.raises(serving.ChatError, match="closed the stream before the answer was complete"):
        serving.stream_chat("127.0.0.1", fake.port, KEY, REQUEST)


def test_it_bounds_the_answer_it_keeps(fake):
    piece = "é" * 1000  # six bytes each as JSON
    fake.set("/v1/chat/completions", [chunk(piece)] * 30 + [chunk(None, "stop"), b"data: [DONE]\n\n"])
    answer = serving.stream_chat("127.0.0.1", fake.port, "", REQUEST)
    result = answer.result()
    assert result["truncated"] is True and result["pieces"] == 30
    assert len(json.dumps(result)) < serving.MAX_TEXT_JSON + 1000
    assert "Authorization" not in fake.requests[-1][2]  # no key, no header


def test_it_says_so_when_no_server_answers():
    with pytest.raises(serving.ChatError, match="the server did not answer"):
        serving.stream_chat("127.0.0.1", 1, KEY, REQUEST)


@pytest.mark.parametrize("change, error", [
    ({"messages": []}, "1 to 20 messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "needs a role"),
    ({"messages": [{"role": "user", "content": "  "}]}, "needs a text"),
    ({"messages": [{"role": "user", "content": "x" * 40_000}]}, "needs a text"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": 5}, "temperature"),
])
def test_the_rig_checks_a_chat_request_again(change, error):
    with pytest.raises(serving.ChatError, match=error):
        serving.check_chat_request({**REQUEST, **change})


# --- the rig's chat command (nodes/agent/tasks/chat.py), without Celery ------------------------------------------
class ReportingAgent:
    """What the chat command uses of the agent: its supervisor, and the operation reports it sends (kept here)."""

    def __init__(self, supervisor):
        self.supervisor, self.reports, self.sent_at = supervisor, [], []

    def operation(self, operation_id, status, message="", result=None, **_extra):
        self.reports.append((operation_id, status, message, result))
        self.sent_at.append(time.monotonic())


@pytest.fixture
def rig(tmp_path, fake):
    from nodes.agent.serverspec import ServerSpec
    from nodes.agent.supervisor import Server, Supervisor

    supervisor = Supervisor(tmp_path)
    spec = ServerSpec(deployment_id=5, binary="/opt/llama-server", model_path="/models/a.gguf", port=fake.port,
                      api_key=KEY)
    supervisor.servers[5] = Server(spec, tmp_path / "5")
    return ReportingAgent(supervisor)


def test_the_rig_refuses_a_chat_for_a_server_it_does_not_run_healthy(rig):
    from nodes.agent.tasks import chat

    chat.chat(rig, 1, 5, REQUEST)
    chat.chat(rig, 2, 6, REQUEST)
    assert rig.reports == [(1, "failed", "the server is stopped on the rig: launch it first", None),
                           (2, "failed", "deployment 6 is not on this rig", None)]


def test_the_rig_streams_running_reports_then_the_whole_answer(rig, fake):
    from nodes.agent.supervisor import HEALTHY
    from nodes.agent.tasks import chat

    rig.supervisor.servers[5].state = HEALTHY
    timings = {"predicted_n": 30, "predicted_per_second": 80.0}
    fake.pace = 0.03
    fake.set("/v1/chat/completions", [chunk(f"w{i} ") for i in range(30)]
             + [chunk(None, "length", timings=timings), b"data: [DONE]\n\n"])
    chat.chat(rig, 3, 5, REQUEST)
    *_, (operation_id, status, message, result) = rig.reports
    assert (operation_id, status) == (3, "succeeded")
    assert result["text"] == "".join(f"w{i} " for i in range(30)) and result["timings"] == timings
    assert message.startswith("30 tokens in ") and message.endswith("(80.0 tokens/s generated)")
    # Running reports with the text so far, growing, never two within THROTTLE of each other.
    running = [(at, r[3]["text"]) for at, r in zip(rig.sent_at, rig.reports) if r[1] == "running"]
    assert len(running) >= 3
    assert all(result["text"].startswith(text) for _, text in running)
    assert [len(text) for _, text in running] == sorted({len(text) for _, text in running})
    assert all(b - a >= chat.THROTTLE for (a, _), (b, _) in zip(running, running[1:]))


def test_the_rig_sends_the_servers_error_and_what_came_before_it(rig, fake):
    from nodes.agent.supervisor import HEALTHY
    from nodes.agent.tasks import chat

    rig.supervisor.servers[5].state = HEALTHY
    fake.set("/v1/chat/completions", [chunk("Hi"), f'data: {{"error": {{"message": "bad {KEY}"}}}}\n\n'.encode()])
    chat.chat(rig, 4, 5, REQUEST)
    [(_, status, message, result)] = [r for r in rig.reports if r[1] != "running"]
    assert (status, message, result["text"]) == ("failed", "the server stopped the answer: bad <api key>", "Hi")


def test_the_rig_stops_an_answer_the_provider_cancels_and_keeps_what_came(rig, fake):
    from nodes.agent.supervisor import HEALTHY
    from nodes.agent.tasks import chat

    rig.supervisor.servers[5].state = HEALTHY
    rig.stopping_chats = set()
    fake.pace = 0.02
    fake.set("/v1/chat/completions", [chunk(f"w{i} ") for i in range(200)] + [b"data: [DONE]\n\n"])
    real_operation = rig.operation

    def cancel_after_three_pieces(operation_id, status, message="", result=None, **extra):
        real_operation(operation_id, status, message, result, **extra)
        if status == "running" and result["pieces"] >= 3:
            rig.stopping_chats.add(operation_id)  # what the agent's cancel command does

    rig.operation = cancel_after_three_pieces
    started = time.monotonic()
    chat.chat(rig, 7, 5, REQUEST)
    *_, (operation_id, status, message, result) = rig.reports
    assert (operation_id, status, message) == (7, "cancelled", "stopped by the provider")
    assert result["text"].startswith("w0 w1 w2 ") and result["pieces"] < 200
    assert time.monotonic() - started < 2  # it did not read the other pieces first
