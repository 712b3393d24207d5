"""Reports that must reach the panel: outcomes and state changes, kept on disk until the panel says it applied them.

A report put here is written to `<state>/outbox/<seq>.json` before it is published. The panel answers each one it
applied (or refused for good) with a signed `agent.ack` naming its sequence number; only then is the file removed.
Until then it is published again — at once when the broker comes back, else after `retry_after` seconds, doubling
up to `max_delay` — so a terminal report lost while Redis restarts, or while the panel worker is down, still lands.
Resending is safe: a report keeps its sequence number and the panel applies each object's reports in sequence
order, so a copy changes nothing.

Plain Python, no Celery: `publish(kind, payload, seq)` is the agent's and may raise (broker down).
"""

import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger("morpheus.agent.outbox")


class Outbox:
    def __init__(self, folder, publish, retry_after=15.0, max_delay=600.0, max_entries=20_000, clock=time.monotonic):
        self.folder = Path(folder)
        self.publish = publish
        self.retry_after, self.max_delay, self.max_entries = retry_after, max_delay, max_entries
        self.clock = clock
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._entries = {}  # seq → {"kind", "payload", "seq"}
        self._next_try = {}  # seq → monotonic time of the next attempt
        self._tries = {}  # seq → attempts so far
        self._load()

    def _load(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.folder.glob("*.json"), key=lambda p: p.stem):
            try:
                entry = json.loads(path.read_text())
                seq = int(entry["seq"])
                if not isinstance(entry.get("kind"), str) or path.stem != str(seq):
                    raise ValueError("not an outbox entry")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("dropping unreadable outbox entry %s: %s", path.name, exc)
                path.unlink(missing_ok=True)
                continue
            self._entries[seq] = {"kind": entry["kind"], "payload": entry.get("payload"), "seq": seq}
            self._next_try[seq] = 0.0  # left over from the last run: due at once
            self._tries[seq] = 0
        if self._entries:
            log.info("%d report(s) from before this start still wait for the panel", len(self._entries))

    def __len__(self):
        with self._lock:
            return len(self._entries)

    def put(self, kind, payload, seq):
        """Keep the report (durably) and try to publish it now; a failed publish only leaves it for later."""
        entry = {"kind": kind, "payload": payload, "seq": seq}
        self._write(entry)
        with self._lock:
            self._entries[seq] = entry
            self._tries[seq] = 0
            self._next_try[seq] = self.clock() + self.retry_after
            self._trim()
        self._try(entry)

    def _write(self, entry):
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(entry, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.folder / f"{entry['seq']}.json")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _trim(self):
        """Far more than a rig ever has waiting (the panel gone for weeks): drop the oldest, saying so."""
        while len(self._entries) > self.max_entries:
            oldest = min(self._entries)
            log.error("outbox full (%d reports): dropping report %s (%s)", self.max_entries, oldest,
                      self._entries[oldest]["kind"])
            self._forget(oldest)

    def _forget(self, seq):
        self._entries.pop(seq, None)
        self._next_try.pop(seq, None)
        self._tries.pop(seq, None)
        (self.folder / f"{seq}.json").unlink(missing_ok=True)

    def acked(self, seqs):
        """The panel applied these: forget them. Unknown numbers (acked twice, or not ours) are ignored."""
        with self._lock:
            for seq in seqs:
                if seq in self._entries:
                    self._forget(seq)

    def _try(self, entry):
        try:
            self.publish(entry["kind"], entry["payload"], entry["seq"])
            return True
        except Exception as exc:  # the broker is away: the entry stays, the work goes on
            log.warning("report %s (%s) not sent, kept for later: %s", entry["seq"], entry["kind"], exc)
            return False

    def flush(self, everything=False):
        """Publish again what is due (`everything`: all of it, e.g. the broker just came back). Returns how many
        were sent; stops at the first failure (the broker is still away)."""
        if not self._flushing.acquire(blocking=False):
            return 0  # another flush is at it
        try:
            now = self.clock()
            with self._lock:
                due = [dict(self._entries[s]) for s in sorted(self._entries) if everything or self._next_try[s] <= now]
            sent = 0
            for entry in due:
                seq = entry["seq"]
                ok = self._try(entry)
                with self._lock:
                    if seq not in self._entries:
                        continue  # acked meanwhile
                    self._tries[seq] += 1
                    delay = min(self.max_delay, self.retry_after * 2 ** min(self._tries[seq], 16))
                    self._next_try[seq] = self.clock() + delay
                if not ok:
                    break
                sent += 1
            return sent
        finally:
            self._flushing.release()

    def pending(self, kind=None):
        """Copies of the entries still waiting (of one kind)."""
        with self._lock:
            return [dict(e) for s, e in sorted(self._entries.items()) if kind is None or e["kind"] == kind]
