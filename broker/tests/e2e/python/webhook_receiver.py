"""A webhook receiver that checks each request with the Python server SDK's validate_webhook.

Run as a process by webhooks.test.mjs: `webhook_receiver.py APP_ID KEY SECRET`. It listens on a
free loopback port, prints `{"port": N}` once, then one JSON line per request:
`{"valid": bool, "events": [...]}` (events as the SDK parsed them, empty when invalid), and answers
200 to a valid request, 401 to an invalid one.
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

import pusher

APP_ID, KEY, SECRET = sys.argv[1:4]
CLIENT = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length).decode("utf-8")
        parsed = CLIENT.validate_webhook(
            key=self.headers.get("X-Pusher-Key", ""),
            signature=self.headers.get("X-Pusher-Signature", ""),
            body=body,
        )
        valid = parsed is not None
        print(json.dumps({"valid": valid, "events": parsed["events"] if valid else []}), flush=True)
        self.send_response(200 if valid else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", 0), Handler)
print(json.dumps({"port": server.server_address[1]}), flush=True)
server.serve_forever()
