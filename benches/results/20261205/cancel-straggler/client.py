import socket, struct, time, sys
port = int(sys.argv[1])
def msg(tag, body): return tag + struct.pack("!i", len(body)+4) + body
def recv_until_Z(s):
    out=[]; buf=b""
    while True:
        while len(buf) < 5:
            d = s.recv(65536)
            if not d: return out
            buf += d
        tag = buf[:1]; n = struct.unpack("!i", buf[1:5])[0]
        while len(buf) < 1+n:
            buf += s.recv(65536)
        out.append((tag, buf[5:1+n])); buf = buf[1+n:]
        if tag == b"Z": return out
s = socket.create_connection(("127.0.0.1", port))
body = struct.pack("!i", 196608) + b"user\0postgres\0database\0postgres\0\0"
s.sendall(struct.pack("!i", len(body)+4) + body)
hello = recv_until_Z(s)
pid, secret = [struct.unpack("!ii", m[1][:8]) for m in hello if m[0]==b"K"][0]
def q(sql):
    t=time.time(); s.sendall(msg(b"Q", sql.encode()+b"\0")); r=recv_until_Z(s)
    errs=[m[1] for m in r if m[0]==b"E"]
    code = [f[1:] for f in errs[0].split(b"\0") if f[:1]==b"C"][0].decode() if errs else "ok"
    print(f"{sql}: {code} after {time.time()-t:.3f}s", flush=True)
t=time.time(); s.sendall(msg(b"Q", b"SELECT pg_sleep(5)\0"))
time.sleep(0.5)
c = socket.create_connection(("127.0.0.1", port)); c.sendall(struct.pack("!iiii", 16, 80877102, pid, secret)); c.close()
r=recv_until_Z(s); print("first:", [m[0] for m in r], f"{time.time()-t:.3f}s", flush=True)
q(sys.argv[2] if len(sys.argv)>2 else "SELECT pg_sleep(2)")
q("SELECT pg_sleep(1)")
