"""A webhook receiver for tests/e2e/webhooks.rs.

Verifies every request with `standardwebhooks` (the Standard Webhooks
reference library, from PyPI) and appends one JSON line per request to the
log file: the path, the `webhook-id`, whether the signature verified, the
status answered, and the alert it carried.

Paths:
  /ok       200 once verified
  /flaky    503 on the first attempt of each webhook-id, then 200
  /slow     waits 2 s, then 200
  /down     503 while the file given as --down-flag exists, then 200

Usage: webhook_receiver.py SECRET LOG_FILE DOWN_FLAG
Prints the port it listens on (127.0.0.1), then serves until killed.
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

SECRET, LOG, DOWN_FLAG = sys.argv[1], sys.argv[2], sys.argv[3]
VERIFIER = Webhook(SECRET)
LOCK = threading.Lock()
ATTEMPTS = {}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        msg_id = self.headers.get("webhook-id", "")
        entry = {"path": self.path, "id": msg_id}
        try:
            payload = VERIFIER.verify(body, dict(self.headers))
            entry["verified"] = True
            entry["type"] = payload.get("type")
            data = payload.get("data", {})
            entry["device"] = data.get("device_id")
            entry["kind"] = data.get("kind")
            entry["ts_ms"] = data.get("ts_ms")
            entry["alert_id"] = data.get("id")
        except Exception as e:  # noqa: BLE001: any failure is a bad request
            entry["verified"] = False
            entry["error"] = repr(e)
        with LOCK:
            ATTEMPTS[(self.path, msg_id)] = ATTEMPTS.get((self.path, msg_id), 0) + 1
            attempt = ATTEMPTS[(self.path, msg_id)]
        entry["attempt"] = attempt
        if not entry["verified"]:
            status = 401
        elif self.path == "/flaky" and attempt == 1:
            status = 503
        elif self.path == "/down" and os.path.exists(DOWN_FLAG):
            status = 503
        else:
            if self.path == "/slow":
                time.sleep(2)
            status = 200
        entry["status"] = status
        with LOCK:
            with open(LOG, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
