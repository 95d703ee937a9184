# Raw IP for the other-protocols tests; needs CAP_NET_RAW, which container runtimes grant by
# default. argv:
#   ping HOST           one ICMP (v6: ICMPv6) echo request; prints "reply", "timeout", or
#                       "refused" when a rule of this host dropped it on the way out (EPERM)
#   send PROTO HOST [WORD]
#                       one datagram of IP protocol PROTO (47 GRE, 253 experimental) carrying
#                       WORD (default "exfiltrated"); prints "sent", or "refused" (EPERM)
#   listen PROTO FAMILY prints "ready", then, once a datagram of PROTO (FAMILY 4 or 6) carries
#                       b"sentinel", "got" if one carried b"exfiltrated" before, else "nothing"
#   forge-error HOST    one ICMP fragmentation needed (v6: packet too big) sent to HOST, quoting a
#                       TCP segment from HOST port 443 to this host that no connection sent,
#                       carrying "exfiltrated"; prints "sent", or "refused" (EPERM)
#   late-answer ADDR    a UDP "DNS server" on ADDR port 53: answers a query twice, 0.5 s apart,
#                       from a socket connected to the client; prints "refused" when the client's
#                       port unreachable for the second answer arrives (a RELATED ICMP error),
#                       else "nothing"
import select, socket, struct, sys, time

def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff

def fam(host):
    return socket.AF_INET6 if ':' in host else socket.AF_INET

cmd = sys.argv[1]
if cmd == 'ping':
    host = sys.argv[2]
    f = fam(host)
    proto, req, rep = (socket.IPPROTO_ICMP, 8, 0) if f == socket.AF_INET else (socket.IPPROTO_ICMPV6, 128, 129)
    s = socket.socket(f, socket.SOCK_RAW, proto)
    ident = 0x4567
    msg = struct.pack('!BBHHH', req, 0, 0, ident, 1) + b'exfiltrated'
    # The kernel computes an ICMPv6 checksum itself (RFC 3542 §3.1); ICMP's is ours.
    if f == socket.AF_INET: msg = msg[:2] + struct.pack('!H', csum(msg)) + msg[4:]
    try:
        s.sendto(msg, (host, 0))
    except PermissionError:
        # A rule of this host dropped it on its way out (sidecar mode): EPERM, said at once.
        print('refused'); sys.exit(0)
    deadline = time.monotonic() + 2
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([s], [], [], left)[0]: break
        data = s.recv(2048)
        if f == socket.AF_INET: data = data[(data[0] & 0x0f) * 4:]
        if len(data) >= 8 and data[0] == rep and struct.unpack('!H', data[4:6])[0] == ident:
            print('reply'); sys.exit(0)
    print('timeout')
elif cmd == 'send':
    proto, host = int(sys.argv[2]), sys.argv[3]
    s = socket.socket(fam(host), socket.SOCK_RAW, proto)
    try:
        s.sendto(b'\0\0\x08\0' + (sys.argv[4] if len(sys.argv) > 4 else 'exfiltrated').encode(), (host, 0))
        print('sent')
    except PermissionError:
        print('refused')
elif cmd == 'listen':
    proto, family = int(sys.argv[2]), sys.argv[3]
    s = socket.socket(socket.AF_INET6 if family == '6' else socket.AF_INET, socket.SOCK_RAW, proto)
    print('ready', flush=True)
    # Until the sentinel, which the test sends from a host no rule filters after the sandbox's
    # datagram: a bounded wait that never depends on how fast a loaded machine starts processes.
    got = False
    deadline = time.monotonic() + 30
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([s], [], [], left)[0]: break
        data = s.recv(4096)
        got = got or b'exfiltrated' in data
        if b'sentinel' in data: break
    print('got' if got else 'nothing')
elif cmd == 'forge-error':
    host = sys.argv[2]
    f = fam(host)
    probe = socket.socket(f, socket.SOCK_DGRAM)
    probe.connect((host, 9))
    me = probe.getsockname()[0]
    # The quoted segment: port 443 to 40000, seq 1, ACK|PSH, then the payload.
    tcp = struct.pack('!HHIIBBHHH', 443, 40000, 1, 1, 5 << 4, 0x18, 65535, 0, 0) + b'exfiltrated'
    if f == socket.AF_INET:
        inner = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, socket.inet_pton(f, host), socket.inet_pton(f, me))
        inner = inner[:10] + struct.pack('!H', csum(inner)) + inner[12:]
        # RFC 1191 §4: type 3 code 4, the next hop's MTU in the second half of the unused word.
        msg = struct.pack('!BBHHH', 3, 4, 0, 0, 576) + inner + tcp
        msg = msg[:2] + struct.pack('!H', csum(msg)) + msg[4:]
        s = socket.socket(f, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    else:
        inner = struct.pack('!IHBB16s16s', 6 << 28, len(tcp), 6, 64, socket.inet_pton(f, host), socket.inet_pton(f, me))
        # RFC 4443 §3.2: type 2, the MTU in the word after the checksum (the kernel computes it).
        msg = struct.pack('!BBHI', 2, 0, 0, 1280) + inner + tcp
        s = socket.socket(f, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        s.sendto(msg, (host, 0))
        print('sent')
    except PermissionError:
        print('refused')
elif cmd == 'late-answer':
    addr = sys.argv[2]
    s = socket.socket(fam(addr), socket.SOCK_DGRAM)
    s.bind((addr, 53))
    print('ready', flush=True)
    if not select.select([s], [], [], 30)[0]:
        print('no query'); sys.exit(0)
    _, client = s.recvfrom(512)
    s.connect(client[:2])
    s.send(b'answer')
    time.sleep(0.5)
    s.send(b'late')
    time.sleep(0.5)
    try:
        s.send(b'later')
        time.sleep(0.5)
        s.send(b'latest')
        print('nothing')
    except ConnectionRefusedError:
        print('refused')
else:
    sys.exit('unknown command ' + cmd)
