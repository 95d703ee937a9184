# A rolling restart's handover in a network namespace of its own (run under `unshare -n`, as
# root): two listeners on one port with SO_REUSEPORT, the old process's and the new one's. N
# clients connect while their handshakes cannot finish (their last ACK is dropped by an iptables
# rule), so each waits in SYN_RECV on whichever listener the kernel picked; then the old listener
# closes, the rule goes, and each client sends a byte, whose segment carries the ACK again. With
# net.ipv4.tcp_migrate_req=1 the kernel hands the closed listener's handshakes to the other one;
# with 0 they are reset. Prints {"delivered": accepted by the listener that stays, with the
# byte, "reset": clients that met a reset} as JSON.
#
# usage: migrate-req.py MIGRATE_REQ N

import json
import socket
import subprocess
import sys
import time

migrate, n = int(sys.argv[1]), int(sys.argv[2])
subprocess.run(['ip', 'link', 'set', 'lo', 'up'], check=True)
with open('/proc/sys/net/ipv4/tcp_migrate_req', 'w') as f:
    f.write(str(migrate))


def listener(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(('127.0.0.1', port))
    s.listen(128)
    return s


old = listener(0)
port = old.getsockname()[1]
new = listener(port)
# A pure ACK (no SYN, FIN, RST or PSH) to the port: the handshake's last segment.
rule = ['OUTPUT', '-p', 'tcp', '--dport', str(port), '--tcp-flags', 'SYN,ACK,FIN,RST,PSH', 'ACK', '-j', 'DROP']
subprocess.run(['iptables', '-A', *rule], check=True)
clients = []
for _ in range(n):
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.settimeout(5)
    c.connect(('127.0.0.1', port))
    clients.append(c)
time.sleep(0.1)
old.close()
subprocess.run(['iptables', '-D', *rule], check=True)
for c in clients:
    try:
        c.send(b'x')
    except OSError:
        pass
delivered = 0
new.settimeout(0.2)
until = time.monotonic() + 5
while delivered < n and time.monotonic() < until:
    try:
        s, _ = new.accept()
    except socket.timeout:
        continue
    s.settimeout(2)
    try:
        if s.recv(1) == b'x':
            delivered += 1
    except OSError:
        pass
    s.close()
reset = 0
for c in clients:
    c.settimeout(0.5)
    try:
        c.recv(1)
    except ConnectionResetError:
        reset += 1
    except (socket.timeout, OSError):
        pass
    c.close()
print(json.dumps({'delivered': delivered, 'reset': reset}))
