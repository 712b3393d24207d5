"""What a running llama-server is doing, and one chat through it. Plain Python, no Django.

Serving metrics: the server's `GET /metrics` (Prometheus text; servers are launched with --metrics) and
`GET /slots`, both behind the deployment's API key when it has one (only /health is public). Counters become
rates between two readings of the same server; a restarted server (counters lower) gives no rate that round.
llama-server adds a request's generated tokens to its counter only when the request ends, so the tokens the busy
slots have generated so far are added to it: a long answer shows its pace while it runs, not in one jump at its end.
Everything a server sends is treated as hostile: reads are size- and time-bounded, unknown or absurd values are
dropped, and what reaches a report holds only the numbers below, each within the bounds the panel checks
(nodes/reports.py imports them from here).

A chat: `POST /v1/chat/completions` with stream on; the text arrives piece by piece and is handed to a callback,
bounded in size. The key stays on the rig: it goes in one header to the one server it belongs to.
"""

import json
import logging
import math
import threading
import time
import urllib.error
import urllib.request

log = logging.getLogger("morpheus.agent.serving")

TIMEOUT = 1.0  # seconds per request: a stuck server must not hold up the readings of the others
MAX_METRICS_BYTES = 64 * 1024
MAX_SLOTS_BYTES = 2 * 1024 * 1024  # 256 slots of sampling parameters fit with room to spare
MAX_SERVERS = 256  # per report; the supervisor runs no more than the panel asked for
MAX_COUNT = 10**15  # any counter or token figure above this is nonsense from a broken server
MAX_RATE = 10**9  # tokens/s
MAX_SLOTS = 4096
MAX_ERROR = 200

PREFIX = "llamacpp:"
COUNTERS = ("prompt_tokens_total", "tokens_predicted_total", "n_decode_total")
GAUGES = ("requests_processing", "requests_deferred", "n_busy_slots_per_decode", "predicted_tokens_seconds",
          "prompt_tokens_seconds")

# What one server's reading holds in a telemetry report: field → (lowest, highest, whole number).
FIELDS = {
    "generated_tps": (0, MAX_RATE, False),  # tokens generated per second since the previous reading
    "prompt_tps": (0, MAX_RATE, False),  # prompt tokens processed per second since the previous reading
    "tokens_generated": (0, MAX_COUNT, True),  # since the server started, those of the requests running now included
    "prompt_tokens": (0, MAX_COUNT, True),  # prompt tokens processed since the server started (cached ones not)
    "requests_processing": (0, MAX_COUNT, True),
    "requests_deferred": (0, MAX_COUNT, True),
    "busy_per_decode": (0, MAX_SLOTS, False),
    "slots_busy": (0, MAX_SLOTS, True),
    "slots_total": (0, MAX_SLOTS, True),
    "kv_used": (0, MAX_COUNT, True),  # tokens held in the slots' KV cache
    "kv_total": (0, MAX_COUNT, True),  # the slots' context sizes together
}


class ServingError(Exception):
    """The server could not be read; the message says why, with nothing secret in it."""


def target_host(host):
    """Where the rig reaches its own server: a wildcard bind is reached on loopback; IPv6 in brackets."""
    target = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"[{target}]" if ":" in target else target


def _get(host, port, path, api_key, max_bytes, timeout):
    request = urllib.request.Request(f"http://{target_host(host)}:{int(port)}{path}")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise ServingError(f"{path} answered HTTP {exc.code}") from None
    except (OSError, ValueError) as exc:
        raise ServingError(f"{path} did not answer ({type(exc).__name__})") from None
    if len(body) > max_bytes:
        raise ServingError(f"{path} sent more than {max_bytes} bytes")
    return body


def _bounded(value, lo, hi):
    """A finite number within lo..hi, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or not lo <= value <= hi:
        return None
    return value


def parse_metrics(text):
    """{name without the llamacpp: prefix: value} for the metrics we know, from Prometheus text. Anything else —
    other metrics, labels, comments, garbage lines, values out of range — is skipped."""
    wanted = set(COUNTERS) | set(GAUGES)
    found = {}
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    for line in text.splitlines()[:5000]:
        line = line.strip()
        if not line.startswith(PREFIX):
            continue
        parts = line.split()
        if len(parts) < 2 or "{" in parts[0]:
            continue
        name = parts[0][len(PREFIX):]
        if name not in wanted or name in found:
            continue
        try:
            value = float(parts[1])
        except ValueError:
            continue
        value = _bounded(value, 0, MAX_COUNT)
        if value is not None:
            found[name] = value
    return found


def parse_slots(body):
    """(busy, total, kv_used, kv_total, generating) from /slots' JSON list — `generating`: the tokens the busy slots
    have generated so far; raises ServingError when it is not a list of slots."""
    try:
        slots = json.loads(body)
    except (ValueError, RecursionError):
        raise ServingError("/slots did not send JSON") from None
    if not isinstance(slots, list) or len(slots) > MAX_SLOTS:
        raise ServingError("/slots did not send a list of slots")
    busy = total = kv_used = kv_total = generating = 0
    for slot in slots:
        if not isinstance(slot, dict):
            continue
        total += 1
        if slot.get("is_processing") is True:
            busy += 1
            generating += _decoded(slot)
        n_ctx = _bounded(slot.get("n_ctx"), 0, MAX_COUNT)
        held = _bounded(slot.get("n_prompt_tokens"), 0, MAX_COUNT)  # the slot's cached tokens, generated ones too
        if n_ctx is not None:
            kv_total += int(n_ctx)
            if held is not None:
                kv_used += int(min(held, n_ctx))
    return busy, total, min(kv_used, MAX_COUNT), min(kv_total, MAX_COUNT), min(generating, MAX_COUNT)


def _decoded(slot):
    """Tokens a busy slot has generated for its request so far (`next_token[0].n_decoded`), 0 when not given."""
    next_token = slot.get("next_token")
    first = next_token[0] if isinstance(next_token, list) and next_token else None
    value = _bounded(first.get("n_decoded"), 0, MAX_COUNT) if isinstance(first, dict) else None
    return int(value or 0)


def rate(now, before, name):
    """Counter `name` per second between two readings; None without a previous one or after a counter reset."""
    if before is None or name not in now["counters"] or name not in before["counters"]:
        return None
    elapsed = now["at"] - before["at"]
    delta = now["counters"][name] - before["counters"][name]
    if elapsed <= 0 or delta < 0:  # a restarted server starts its counters again
        return None
    return _bounded(delta / elapsed, 0, MAX_RATE)


def read_server(host, port, api_key, previous=None, timeout=TIMEOUT, monotonic=time.monotonic):
    """One reading of one server: (the report's fields, what the next reading computes rates from)."""
    # Counters first: a request ending between the two reads is left out once and counted by the next reading,
    # never counted twice (which would make the total seem to go back afterwards).
    metrics = parse_metrics(_get(host, port, "/metrics", api_key, MAX_METRICS_BYTES, timeout))
    busy, total, kv_used, kv_total, generating = parse_slots(
        _get(host, port, "/slots", api_key, MAX_SLOTS_BYTES, timeout))
    counters = {}
    if "tokens_predicted_total" in metrics:
        counters["generated"] = metrics["tokens_predicted_total"] + generating
    if "prompt_tokens_total" in metrics:
        counters["prompt"] = metrics["prompt_tokens_total"]
    state = {"at": monotonic(), "counters": counters}
    reading = {
        "generated_tps": rate(state, previous, "generated"),
        "prompt_tps": rate(state, previous, "prompt"),
        "tokens_generated": counters.get("generated"),
        "prompt_tokens": counters.get("prompt"),
        "requests_processing": metrics.get("requests_processing"),
        "requests_deferred": metrics.get("requests_deferred"),
        "busy_per_decode": metrics.get("n_busy_slots_per_decode"),
        "slots_busy": busy,
        "slots_total": total,
        "kv_used": kv_used if kv_total else None,
        "kv_total": kv_total or None,
    }
    return clean_reading(reading), state


def clean_reading(reading):
    """Only the known fields, each None or a number within its bounds (rounded: a report is small)."""
    clean = {}
    for name, (lo, hi, whole) in FIELDS.items():
        value = _bounded(reading.get(name), lo, hi)
        if value is not None:
            value = int(value) if whole else round(float(value), 2)
        clean[name] = value
    return clean


class ServingWatch:
    """Reads every healthy server every `interval` seconds on a thread of its own (a slow server never holds up the
    hardware sampler or the worker), keeping the latest reading per deployment for the telemetry report."""

    def __init__(self, targets, interval, clock=time.time, timeout=TIMEOUT):
        # callable → [(deployment id, host, port, api key, instance)] of the servers to read now; a new `instance` (the
        # server's pid) means counters started again
        self.targets = targets
        self.interval, self.clock, self.timeout = interval, clock, timeout
        self._previous = {}  # deployment id → (its instance, what the next rates are computed from)
        self._readings, self._taken = [], 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="serving-metrics", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()

    def readings(self):
        """The latest readings; none older than three intervals (a stuck thread must not report old numbers)."""
        with self._lock:
            readings, taken = self._readings, self._taken
        if not readings or self.clock() - taken > 3 * self.interval:
            return []
        return [dict(r) for r in readings]

    def _run(self):
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.sample()
            except Exception:
                log.exception("serving metrics failed")
            self._stop.wait(max(0.05, self.interval - (time.monotonic() - started)))

    def sample(self):
        """Read every target once; returns the readings (also kept for the next telemetry report)."""
        readings, seen = [], set()
        for deployment_id, host, port, api_key, instance in list(self.targets())[:MAX_SERVERS]:
            seen.add(deployment_id)
            before = self._previous.get(deployment_id)
            previous = before[1] if before is not None and before[0] == instance else None
            entry = {"deployment": deployment_id, "at": self.clock()}
            try:
                fields, state = read_server(host, port, api_key, previous, timeout=self.timeout)
            except ServingError as exc:
                entry["error"] = scrub(str(exc), api_key)[:MAX_ERROR]
                self._previous.pop(deployment_id, None)
            else:
                entry.update(fields)
                self._previous[deployment_id] = (instance, state)
            readings.append(entry)
        for gone in set(self._previous) - seen:
            del self._previous[gone]
        with self._lock:
            self._readings, self._taken = readings, self.clock()
        return readings


def supervised_targets(supervisor, healthy):
    """The targets of a ServingWatch from a Supervisor: its healthy servers, each with its pid (a new process
    starts its counters again, so no rate is taken across a restart)."""
    with supervisor.lock:
        servers = list(supervisor.servers.values())
    return [(s.spec.deployment_id, s.spec.host, s.spec.port, s.spec.api_key, s.pid)
            for s in servers if s.state == healthy and s.spec.desired == "running"]


def scrub(text, secret):
    """`text` without `secret` in it (a server's error message must never carry the key on)."""
    return text.replace(secret, "<api key>") if secret else text


# --- one chat through the server ----------------------------------------------------------------------------------
ROLES = ("system", "user", "assistant")
MAX_MESSAGES = 20
MAX_MESSAGE_CHARS = 32_000
MAX_TOKENS = 4096
MAX_TEXT_JSON = 60_000  # the answer kept, measured as JSON (an operation's result is bounded at 128 KiB)
CHUNK_TIMEOUT = 120.0  # for any one read (a long prompt on a slow rig is processed before the first piece comes)
MAX_LINE = 1024 * 1024


class ChatError(Exception):
    """The chat failed; the message says why in words for the provider (the server's own words where it gave some)."""

    answer = None  # what the server had sent before it failed, if anything


def check_chat_request(request):
    """The chat the panel asked for, checked again on the rig; raises ChatError. Returns the server's request body."""
    if not isinstance(request, dict):
        raise ChatError("the chat request must be an object")
    messages = request.get("messages")
    if not isinstance(messages, list) or not 1 <= len(messages) <= MAX_MESSAGES:
        raise ChatError(f"a chat needs 1 to {MAX_MESSAGES} messages")
    clean = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ChatError(f"each message needs a role ({', '.join(ROLES)})")
        content = message.get("content")
        if not isinstance(content, str) or not content.strip() or len(content) > MAX_MESSAGE_CHARS:
            raise ChatError(f"each message needs a text of 1 to {MAX_MESSAGE_CHARS} characters")
        clean.append({"role": message["role"], "content": content})
    max_tokens = request.get("max_tokens", 256)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS:
        raise ChatError(f"max_tokens must be a whole number from 1 to {MAX_TOKENS}")
    temperature = request.get("temperature", 0.8)
    if _bounded(temperature, 0, 2) is None:
        raise ChatError("temperature must be a number from 0 to 2")
    return {"messages": clean, "max_tokens": max_tokens, "temperature": float(temperature), "stream": True,
            "stream_options": {"include_usage": True}}


def _server_error(body, status):
    """The server's own error message from its JSON error body, or the HTTP status."""
    try:
        data = json.loads(body)
        message = data["error"]["message"] if isinstance(data.get("error"), dict) else data.get("error")
    except (ValueError, TypeError, KeyError, AttributeError):
        message = None
    if not isinstance(message, str) or not message.strip():
        message = body.decode("utf-8", errors="replace").strip()[:300] if isinstance(body, bytes) else ""
    return f"the server answered HTTP {status}: {message}" if message else f"the server answered HTTP {status}"


class Answer:
    """The answer so far, bounded in size: text, pieces received, and the server's closing figures."""

    def __init__(self):
        self.parts, self.size, self.pieces, self.truncated = [], 0, 0, False
        self.finish_reason, self.timings, self.usage = None, None, None

    @property
    def text(self):
        return "".join(self.parts)

    def add(self, piece):
        self.pieces += 1
        cost = len(json.dumps(piece)) - 2
        if self.truncated or self.size + cost > MAX_TEXT_JSON:
            self.truncated = True
            return
        self.parts.append(piece)
        self.size += cost

    def result(self):
        result = {"text": self.text, "pieces": self.pieces}
        if self.truncated:
            result["truncated"] = True
        if self.finish_reason:
            result["finish_reason"] = str(self.finish_reason)[:20]
        if self.usage:
            result["usage"] = self.usage
        if self.timings:
            result["timings"] = self.timings
        return result


def _numbers(data, names):
    """The named finite numbers of a dict (anything else dropped): the server's timings and usage."""
    if not isinstance(data, dict):
        return None
    found = {}
    for name in names:
        value = _bounded(data.get(name), 0, MAX_COUNT)
        if value is not None:
            found[name] = round(float(value), 3) if isinstance(value, float) else value
    return found or None


TIMINGS = ("prompt_n", "prompt_ms", "prompt_per_second", "predicted_n", "predicted_ms", "predicted_per_second",
           "cache_n")
USAGE = ("prompt_tokens", "completion_tokens", "total_tokens")


def _take_event(answer, data):
    """One `data:` event of the stream into `answer`; True when the stream says it is done."""
    if data == "[DONE]":
        return True
    try:
        event = json.loads(data)
    except (ValueError, RecursionError):
        return False  # not JSON: skipped, as an SSE client skips what it does not understand
    if not isinstance(event, dict):
        return False
    if "error" in event:
        error = event["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise ChatError(f"the server stopped the answer: {str(message)[:500]}")
    usage = _numbers(event.get("usage"), USAGE)
    if usage:
        answer.usage = usage
    timings = _numbers(event.get("timings"), TIMINGS)
    if timings:
        answer.timings = timings
    choices = event.get("choices")
    if isinstance(choices, list):
        for choice in choices[:1]:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            piece = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(piece, str) and piece:
                answer.add(piece.replace("\x00", ""))
            if choice.get("finish_reason"):
                answer.finish_reason = choice["finish_reason"]
    return False


def stream_chat(host, port, api_key, request, on_text=None, deadline=None, should_stop=None):
    """Send one chat to the server and read its streamed answer; `on_text(answer)` after each piece. Returns the
    Answer; raises ChatError with the server's own words on an HTTP error, or with what went wrong."""
    body = json.dumps(check_chat_request(request)).encode()
    http_request = urllib.request.Request(f"http://{target_host(host)}:{int(port)}/v1/chat/completions", data=body,
                                          headers={"Content-Type": "application/json",
                                                   "Accept": "text/event-stream"})
    if api_key:
        http_request.add_header("Authorization", f"Bearer {api_key}")
    answer = Answer()
    try:
        response = urllib.request.urlopen(http_request, timeout=CHUNK_TIMEOUT)
    except urllib.error.HTTPError as exc:
        try:
            error_body = exc.read(64 * 1024)
        except OSError:
            error_body = b""
        raise ChatError(scrub(_server_error(error_body, exc.code), api_key)) from None
    except (OSError, ValueError) as exc:
        raise ChatError(f"the server did not answer: {scrub(str(getattr(exc, 'reason', exc)), api_key)}") from None
    with response:
        try:
            done = _read_stream(response, answer, on_text, deadline, should_stop)
        except ChatError as exc:
            exc.answer = answer  # what came before the failure is still shown
            raise
    if not done and answer.finish_reason is None:
        exc = ChatError("the server closed the stream before the answer was complete")
        exc.answer = answer
        raise exc
    return answer


def _read_stream(response, answer, on_text, deadline, should_stop):
    """Read `data:` events into `answer` until the server says [DONE] (True) or closes the stream (False)."""
    done = False
    try:
        while not done:
            if deadline is not None and time.monotonic() > deadline:
                raise ChatError("the answer took too long; stopped")
            if should_stop is not None and should_stop():
                raise ChatError("stopped")
            line = response.readline(MAX_LINE)
            if not line:
                break
            line = line.decode("utf-8", errors="replace").strip()
            if not line.startswith("data:"):
                continue  # blank separators, SSE comments (":" pings), other fields
            done = _take_event(answer, line[5:].strip())
            if on_text is not None and not done:
                on_text(answer)
    except OSError as exc:
        raise ChatError(f"the stream broke off: {type(exc).__name__}") from None
    return done
