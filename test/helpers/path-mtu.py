# Bulk TCP and a large DNS answer, for the path MTU tests (test/e2e/iptables-path-mtu.test.ts).
# The bytes are a seeded pseudo-random stream, so that a lost, doubled or reordered segment shows.
# argv:
#   serve ADDR...        a TCP server on port 7001 of each ADDR: a client's first line "down N" is
#                        answered with the first N bytes of the stream, "up N" with the SHA-256
#                        (hex) of the N bytes that follow it; prints "ready" once bound
#   bulk HOST up|down N  the client of serve: prints "ok" when the bytes (down) or the server's
#                        hash of what it received (up) match the stream's, else what went wrong
#                        ("stalled after 123456 of 1048576", "no hash back": sent, but the
#                        server never had it all; "wrong bytes", "refused")
#   dns-serve ADDR SIZE  a DNS server on ADDR port 53: every query is answered by TXT records
#                        making a message of exactly SIZE octets, with an EDNS(0) OPT record
#                        (RFC 6891); prints "ready"
#   dns-ask ADDR TRIES   one TXT query for big.test with an EDNS(0) payload size of 4096, sent
#                        again each second while unanswered, TRIES times at most; prints
#                        "answer SIZE" (the answer's octets), or "unanswered"
import hashlib, random, select, socket, struct, sys, time

PORT = 7001

def stream(n):
    return random.Random(1191).randbytes(n)

def fam(host):
    return socket.AF_INET6 if ':' in host else socket.AF_INET

def read_exactly(c, n, deadline):
    got = bytearray()
    while len(got) < n:
        c.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            d = c.recv(min(65536, n - len(got)))
        except socket.timeout:
            break
        if not d: break
        got += d
    return bytes(got)

cmd = sys.argv[1]
if cmd == 'serve':
    listeners = []
    for a in sys.argv[2:]:
        s = socket.socket(fam(a), socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((a, PORT)); s.listen(16); listeners.append(s)
    print('ready', flush=True)
    while True:
        for s in select.select(listeners, [], [], 60)[0]:
            c, _ = s.accept()
            deadline = time.monotonic() + 60
            line = b''
            while not line.endswith(b'\n') and len(line) < 64:
                d = c.recv(1)
                if not d: break
                line += d
            verb, _, n = line.decode().strip().partition(' ')
            try:
                if verb == 'down': c.sendall(stream(int(n)))
                elif verb == 'up': c.sendall(hashlib.sha256(read_exactly(c, int(n), deadline)).hexdigest().encode())
                c.shutdown(socket.SHUT_WR)
                read_exactly(c, 1, time.monotonic() + 5)
            except OSError:
                pass
            c.close()
elif cmd == 'bulk':
    host, verb, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
    c = socket.socket(fam(host), socket.SOCK_STREAM)
    c.settimeout(10)
    try:
        c.connect((host, PORT))
    except OSError as e:
        print('refused' if isinstance(e, ConnectionRefusedError) else 'cannot connect: %s' % e); sys.exit(0)
    # A blackholed path stalls a transfer for good (tcp_mtu_probing is 0): 20 s without a byte is one.
    deadline = time.monotonic() + 20
    if verb == 'down':
        c.sendall(b'down %d\n' % n)
        got = read_exactly(c, n, deadline)
        print('ok' if got == stream(n) else 'stalled after %d of %d' % (len(got), n) if len(got) < n else 'wrong bytes')
    else:
        data = stream(n)
        c.sendall(b'up %d\n' % n)
        sent = 0
        c.settimeout(20)
        try:
            while sent < n:
                sent += c.send(data[sent:sent + 65536])
            c.shutdown(socket.SHUT_WR)
        except (socket.timeout, OSError):
            pass
        answer = read_exactly(c, 64, deadline).decode()
        want = hashlib.sha256(data).hexdigest()
        print('ok' if answer == want else 'stalled after %d of %d sent' % (sent, n) if sent < n else 'no hash back' if not answer else 'wrong bytes')
elif cmd == 'dns-serve':
    addr, size = sys.argv[2], int(sys.argv[3])
    s = socket.socket(fam(addr), socket.SOCK_DGRAM)
    s.bind((addr, 53))
    print('ready', flush=True)
    while select.select([s], [], [], 60)[0]:
        q, client = s.recvfrom(4096)
        end = q.index(b'\0', 12) + 5
        head = q[:2] + struct.pack('!HHHHH', 0x8180, 1, 0, 0, 1) + q[12:end]
        opt = b'\0' + struct.pack('!HHIH', 41, 4096, 0, 0)
        # TXT records of one 255-octet string each (12 octets of header before it), the last one
        # short enough that the message is SIZE octets.
        body = b''
        count = 0
        left = size - len(head) - len(opt)
        while left > 0:
            text = min(255, left - 13)
            body += struct.pack('!HHHIHB', 0xC00C, 16, 1, 60, text + 1, text) + b't' * text
            left -= 13 + text
            count += 1
        msg = head[:6] + struct.pack('!H', count) + head[8:] + body + opt
        s.sendto(msg, client)
elif cmd == 'dns-ask':
    addr, tries = sys.argv[2], int(sys.argv[3])
    s = socket.socket(fam(addr), socket.SOCK_DGRAM)
    s.connect((addr, 53))
    qid = random.getrandbits(16)
    q = struct.pack('!HHHHHH', qid, 0x0100, 1, 0, 0, 1) + b'\x03big\x04test\0' + struct.pack('!HH', 16, 1)
    q += b'\0' + struct.pack('!HHIH', 41, 4096, 0, 0)
    for _ in range(tries):
        s.send(q)
        deadline = time.monotonic() + 1
        while (left := deadline - time.monotonic()) > 0 and select.select([s], [], [], left)[0]:
            a = s.recv(65536)
            if a[:2] == q[:2]:
                print('answer %d' % len(a)); sys.exit(0)
    print('unanswered')
else:
    sys.exit('unknown command ' + cmd)
