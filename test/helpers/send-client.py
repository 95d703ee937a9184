#!/usr/bin/env python3
# A TCP client in a sandbox namespace for the e2e tests (test/helpers/send-client.ts): connects
# (from --bind when given: an IPv4 source, as ::ffff:a.b.c.d towards an IPv6 destination), prints
# its source port, waits --wait seconds, sends the payload, reads the reply until the peer's FIN,
# 64 KiB, or --read-timeout seconds without a byte, and prints the reply's first --show bytes.
#
# argv: [--bind ADDR] [--wait S] [--read-timeout S] [--show N] -- IP PORT PAYLOAD
#   PAYLOAD: Python escapes (\r\n), sent as latin-1; or "hex:" and the bytes in hex.
# stdout: "port N", then "reply b'...'", or "error NAME b'...'" (what was read before it).
# The connect has 10 s; a connect that fails ends the client with Python's traceback.

import argparse
import socket
import sys
import time

p = argparse.ArgumentParser()
p.add_argument('--bind', default='')
p.add_argument('--wait', type=float, default=0.0)
p.add_argument('--read-timeout', type=float, default=10.0)
p.add_argument('--show', type=int, default=300)
p.add_argument('ip')
p.add_argument('port', type=int)
p.add_argument('payload')
a = p.parse_args()

arg = a.payload
payload = bytes.fromhex(arg[4:]) if arg.startswith('hex:') else arg.encode().decode('unicode_escape').encode('latin-1')
family = socket.AF_INET6 if ':' in a.ip else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.settimeout(10)
if a.bind:
    s.bind((a.bind if family == socket.AF_INET else '::ffff:' + a.bind, 0))
s.connect((a.ip, a.port))
print("port", s.getsockname()[1], flush=True)
if a.wait > 0:
    time.sleep(a.wait)
data = b""
try:
    s.sendall(payload)
    s.settimeout(a.read_timeout)
    while len(data) < 65536:
        c = s.recv(4096)
        if not c:
            break
        data += c
except socket.timeout:
    pass
except Exception as e:
    print("error", type(e).__name__, repr(data[:a.show]))
    sys.exit(0)
print("reply", repr(data[:a.show]))
