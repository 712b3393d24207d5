"""Real receivers for alert notifications: an SMTP server (aiosmtpd) and an HTTP server taking webhook POSTs, each in
a thread on a free port, recording what arrived and when (time.time(), to measure latency)."""

import email
import email.policy
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller

from tests.helpers import free_port


class SmtpSink:
    def __init__(self, port=None):
        self.messages = []  # (received at, envelope recipients, email.message.EmailMessage)
        self.port = port or free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((time.time(), list(envelope.rcpt_tos), email.message_from_bytes(envelope.content, policy=email.policy.default)))
        return "250 Message accepted"

    def start(self):
        self.controller.start()
        return self

    def stop(self):
        self.controller.stop()

    def subjects(self):
        return [message["Subject"] for _at, _to, message in self.messages]


class WebhookReceiver:
    """Answers each POST with the next status in `statuses` (then 200), or `redirect_to` with a 302."""

    def __init__(self, statuses=(), redirect_to=None):
        self.posts = []  # (received at, path, body as JSON)
        self.statuses = list(statuses)
        self.redirect_to = redirect_to
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                receiver.posts.append((time.time(), self.path, json.loads(self.rfile.read(length) or b"null")))
                if receiver.redirect_to:
                    self.send_response(302)
                    self.send_header("Location", receiver.redirect_to)
                else:
                    self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path="/hooks/T000/B000/s3cr3t-path"):
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def states(self):
        return [(body["alert"]["cause"], body["alert"]["state"]) for _at, _path, body in self.posts]
