#!/usr/bin/env python3
# The sandbox's side of "a policy change reaches every loop before the API answers"
# (test/e2e/policy-handoff.test.ts), in one process so that nothing comes between the API's
# answer and the look at the connections: started in the sandbox namespace, it opens
# connections through egressd (each echoed once, so each is spliced), then enters the router
# namespace (setns(2)) to send the policy change to the admin API on its loopback. The moment
# the answer's first bytes arrive it asks the kernel, without waiting, whether each connection
# the change refuses has already been closed by egressd; then it sends one more byte on each
# (which must never reach the upstream) and checks that a connection the change still allows
# echoes.
#
# argv[1]: JSON {routerNetns, bind, port, cut: [address...], keep: address, dialing: [address...],
#                sandbox, adminPort, token, method, path, body}; keep, dialing and body may be null
# stdout: JSON {status, atAnswer: ["fin" | "reset" | "open", ...] (cut), dialingAtAnswer: [...],
#               keptEchoes: bool | null}

import ctypes
import json
import os
import socket
import sys
import time

CLONE_NEWNET = 0x40000000


def echoed(s, b):
    s.sendall(b)
    got = b""
    while len(got) < len(b):
        chunk = s.recv(len(b) - len(got))
        if not chunk:
            return False
        got += chunk
    return got == b


def http(a, method, path, body):
    """One admin API request; (status, parsed JSON body)."""
    api = socket.create_connection(("127.0.0.1", a["adminPort"]), timeout=10)
    api.sendall(
        (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {a['token']}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        + body
    )
    reply = b""
    while True:
        chunk = api.recv(65536)
        if not chunk:
            break
        reply += chunk
    api.close()
    head, _, payload = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(payload or b"null")


def state_now(s):
    try:
        return "fin" if s.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b"" else "data"
    except BlockingIOError:
        return "open"
    except ConnectionResetError:
        return "reset"


def main():
    a = json.loads(sys.argv[1])
    cut = []
    for host in a["cut"]:
        s = socket.create_connection((host, a["port"]), timeout=10, source_address=(a["bind"], 0))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not echoed(s, b"a"):
            raise SystemExit(f"{host}: not spliced")
        cut.append(s)
    keep = None
    if a.get("keep"):
        keep = socket.create_connection((a["keep"], a["port"]), timeout=10, source_address=(a["bind"], 0))
        if not echoed(keep, b"k"):
            raise SystemExit(f"{a['keep']}: not spliced")

    # Connections whose upstream never answers (its SYNs are dropped): egressd is still dialing.
    dialing = []
    for host in a.get("dialing") or []:
        s = socket.create_connection((host, a["port"]), timeout=10, source_address=(a["bind"], 0))
        s.sendall(b"a")
        dialing.append(s)

    fd = os.open(a["routerNetns"], os.O_RDONLY)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise SystemExit(f"setns: {os.strerror(ctypes.get_errno())}")
    os.close(fd)
    # Every connection decided (the dialing ones are in their dial) before the change is sent.
    opened = len(cut) + len(dialing) + (1 if keep else 0)
    for _ in range(200):
        c = http(a, "GET", f"/api/v1/sandboxes/{a['sandbox']}", b"")[1]["connections"]
        if c["undecided"] == 0 and c["open"] == opened:
            break
        time.sleep(0.025)
    else:
        raise SystemExit(f"the connections were not all decided: {c}")
    body = b"" if a.get("body") is None else json.dumps(a["body"]).encode()
    api = socket.create_connection(("127.0.0.1", a["adminPort"]), timeout=10)
    api.sendall(
        (
            f"{a['method']} {a['path']} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {a['token']}\r\n"
            + ("Content-Type: application/json\r\n" if body else "")
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        + body
    )
    first = api.recv(65536)
    # The answer has begun to arrive: what the kernel holds for each connection now.
    at_answer = [state_now(s) for s in cut]
    dialing_at_answer = [state_now(s) for s in dialing]
    for s in cut + dialing:
        try:
            s.send(b"Z")
        except OSError:
            pass
    rest = first
    while True:
        chunk = api.recv(65536)
        if not chunk:
            break
        rest += chunk
    status = int(rest.split(b" ", 2)[1])
    kept = echoed(keep, b"still") if keep else None
    print(json.dumps({"status": status, "atAnswer": at_answer, "dialingAtAnswer": dialing_at_answer, "keptEchoes": kept}))


main()
