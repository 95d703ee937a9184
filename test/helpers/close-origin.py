#!/usr/bin/env python3
# Origins that end their connections in the ways that decide egressd's `end` label
# (test/e2e/connection-ends.test.ts): started in the rig's internet namespace, one thread per
# connection. Each reads one request line ("...\n") first, then:
#   7101 fin-then-reset  sends BODY bytes and its FIN (shutdown(SHUT_WR)), waits for anything
#                        more from the client without reading it, then closes with it unread:
#                        Linux answers that close with a reset (RFC 1122 §4.2.2.13). The
#                        exchange was over when the reset came.
#   7102 mid-reset       sends BODY bytes, reads the client's next line (it has every byte),
#                        then resets (SO_LINGER 0) without a FIN: a reset in the middle of
#                        an exchange, with no byte lost in flight.
#   7103 late-reply      waits for the client's FIN, then sends "late\n" and waits for the reset
#                        or EOF that answers it: the client that closed first and did not read.
#   7104 echo            echoes every byte until the client's FIN or reset.
#   7105 early-answer    answers BODY bytes without reading the client's upload, then resets
#                        (SO_LINGER 0), as its close with the upload unread would: an HTTP 413
#                        to a body it will not take. Nothing of its answer was lost in flight.
# prints {"event":"listening"} once bound, then one JSON line per connection when it ends:
# {"port", "received": bytes read, "saw": "eof" | "reset" | "timeout"}.
#
# argv[1]: the address to listen on; argv[2]: BODY, a byte count.

import json
import socket
import struct
import sys
import threading
import time

ADDRESS = sys.argv[1]
BODY = int(sys.argv[2])
lock = threading.Lock()


def say(e):
    with lock:
        sys.stdout.write(json.dumps(e) + "\n")
        sys.stdout.flush()


def request_line(s):
    got = b""
    while not got.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            break
        got += chunk
    return len(got)


def drain(s, received):
    """Reads until EOF or a reset; what the peer did, and the bytes read in all."""
    s.settimeout(10)
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return "eof", received
            received += len(chunk)
    except ConnectionResetError:
        return "reset", received
    except socket.timeout:
        return "timeout", received


def serve(port, s):
    saw = "eof"
    received = 0
    try:
        received = request_line(s)
        if port == 7101:
            s.sendall(b"b" * BODY)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            try:
                s.recv(1, socket.MSG_PEEK)  # left unread: the close below is a reset
                saw = "data"
            except socket.timeout:
                saw = "timeout"
        elif port == 7102:
            s.sendall(b"b" * BODY)
            received += request_line(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            saw = "reset-sent"
        elif port == 7103:
            saw, received = drain(s, received)
            s.sendall(b"late\n")
            saw, received = drain(s, received)
        elif port == 7104:
            s.settimeout(10)
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    received += len(chunk)
                    s.sendall(chunk)
            except ConnectionResetError:
                saw = "reset"
            except socket.timeout:
                saw = "timeout"
            if saw == "eof":
                s.shutdown(socket.SHUT_WR)
        elif port == 7105:
            s.sendall(b"a" * BODY)
            time.sleep(0.2)  # the answer is out of this host before the reset
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            saw = "reset-sent"
    except OSError as e:
        saw = type(e).__name__
    finally:
        s.close()
        say({"port": port, "received": received, "saw": saw})


def listen(port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((ADDRESS, port))
    srv.listen(128)

    def accept_loop():
        while True:
            s, _ = srv.accept()
            threading.Thread(target=serve, args=(port, s), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()


for p in (7101, 7102, 7103, 7104, 7105):
    listen(p)
say({"event": "listening"})
threading.Event().wait()
