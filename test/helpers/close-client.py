#!/usr/bin/env python3
# The sandbox's side of test/e2e/connection-ends.test.ts: one connection to an origin of
# close-origin.py, ended the way `mode` says.
#   fin-then-reset (7101)  sends a line, reads the body to the origin's FIN, then sends "bye\n"
#                          into the origin's closed socket, and waits for the reset it earns.
#   mid-reset (7102)       sends a line, reads the body, says "got\n", waits for the reset.
#   late-reply (7103)      sends a line and its FIN and closes at once: the origin's late reply
#                          meets a closed socket, and this host's kernel resets it.
#   client-reset (7104)    sends a line and BODY bytes, reads the BODY echoed back, then resets
#                          (SO_LINGER 0) without a FIN.
#   late-read (7105)       sends a line and UPLOAD bytes the origin will not read, looks for the
#                          answer only 0.5 s later, then reads it to the reset.
#
# argv[1]: JSON {address, port, mode, body}
# stdout: JSON {received: bytes read, saw: "eof" | "reset" | "timeout" | "closed"}

import json
import socket
import struct
import sys
import time

a = json.loads(sys.argv[1])
mode = a["mode"]
UPLOAD = 65536
s = socket.create_connection((a["address"], a["port"]), timeout=10)


def read_until(n):
    """Reads n bytes, or to EOF / reset; (bytes read, what ended the read)."""
    got = 0
    try:
        while got < n:
            chunk = s.recv(min(65536, n - got))
            if not chunk:
                return got, "eof"
            got += len(chunk)
    except ConnectionResetError:
        return got, "reset"
    except socket.timeout:
        return got, "timeout"
    return got, "count"


out = {}
s.sendall(b"hello\n")
if mode == "fin-then-reset":
    got, saw = read_until(1 << 40)
    s.sendall(b"bye\n")
    _, after = read_until(1)
    out = {"received": got, "saw": saw, "after": after}
elif mode == "mid-reset":
    got, saw = read_until(a["body"])
    s.sendall(b"got\n")
    _, after = read_until(1)
    out = {"received": got, "saw": saw, "after": after}
elif mode == "late-reply":
    s.shutdown(socket.SHUT_WR)
    s.close()
    out = {"received": 0, "saw": "closed"}
elif mode == "client-reset":
    s.sendall(b"x" * a["body"])
    got, saw = read_until(a["body"])  # the origin echoes what follows the line
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    out = {"received": got, "saw": saw}
elif mode == "late-read":
    s.sendall(b"u" * UPLOAD)
    time.sleep(0.5)
    got, saw = read_until(1 << 40)
    out = {"received": got, "saw": saw}
else:
    sys.exit(f"close-client.py: unknown mode {mode!r}")
print(json.dumps(out))
