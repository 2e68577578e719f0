#!/usr/bin/env python3
"""A loopback HTTP sink for `vitalwatch bench notify` against a webhook notifier: answers
every POST with 200 and counts them. Usage: python3 scripts/http-sink.py PORT"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle and the client's
    # delayed ACK add 40 ms to every request (the sink, not the client, would be measured).
    disable_nagle_algorithm = True
    received = 0

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Sink.received += 1
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
