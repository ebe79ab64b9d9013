"""A fake Docker Engine API on a unix socket, for what a real dockerd will
not do: malformed JSON, streams cut mid-object, enormous lines, unknown
event types, 500s, containers that vanish, old API versions, thousands of
containers, event storms.

It runs an asyncio loop in a background thread of the test process; the
test changes its state and pushes events through plain method calls.
HTTP/1.1 with keep-alive, Content-Length bodies, chunked event streams.
"""
import asyncio
import hashlib
import json
import os
import threading
import time


def make_id(n):
    return hashlib.sha256(str(n).encode()).hexdigest()


class FakeDocker:
    def __init__(self, sock_path, api="1.41"):
        self.sock = sock_path
        self.host = "unix://" + sock_path
        self.api = api              # None: no Api-Version header (use /version)
        # Docker 29 and later refuse a versioned path below their minimum
        # API (1.44) with a 400: None accepts every version
        self.min_api = None
        self.containers = {}        # id -> inspect document (dict, ordered)
        self.inspect_faults = {}    # id -> list of faults, used one per request
        self.list_faults = []       # faults for the next /containers/json calls
        self.events_status = None   # e.g. 500: refuse the event stream
        # how the event stream looks: its Content-Type; "lines" (JSON per
        # line) or "json-seq" (RFC 7464: RS before each record); podman 5.x
        # sends the response head only together with the first event
        self.events_ctype = "application/json"
        self.events_framing = "lines"
        self.events_head_with_first_event = False
        self._headless = set()      # streams whose head is still unsent
        self.streams = []           # open event streams (asyncio writers)
        self.stream_opens = 0
        self.requests = []          # (method, path) served
        self.cache = {}             # id -> inspect JSON text
        self.lock = threading.Lock()
        self._n = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    # ---- life cycle ----
    def start(self):
        self.thread.start()
        self.ready.wait(10)
        return self

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.set_exception_handler(lambda loop, ctx: None)  # torn down on purpose

        async def main():
            self.server = await asyncio.start_unix_server(self._client, path=self.sock, limit=1 << 20)
            self.ready.set()
            await self.server.serve_forever()
        try:
            self.loop.run_until_complete(main())
        except asyncio.CancelledError:
            pass
        # let the cancelled client tasks finish quietly
        pending = asyncio.all_tasks(self.loop)
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    def stop(self):
        if self.loop.is_closed():
            return

        def _stop():
            for w in list(self.streams):
                w.close()
            self.server.close()
            for t in asyncio.all_tasks(self.loop):
                t.cancel()
        self.loop.call_soon_threadsafe(_stop)
        self.thread.join(5)
        try:
            os.unlink(self.sock)
        except FileNotFoundError:
            pass

    def call(self, fn, *a):
        """Runs fn in the server's loop and waits for it."""
        done = threading.Event()
        out = []

        def run():
            try:
                out.append(fn(*a))
            finally:
                done.set()
        self.loop.call_soon_threadsafe(run)
        done.wait(10)
        return out[0] if out else None

    # ---- state ----
    def add(self, image="bbx", ports=None, name=None, running=True, labels=None, env=None, cid=None):
        """Adds a container; ports: [("80/tcp", [("127.0.0.1", "32768")]), ("53/udp", None)]
        in the order the daemon will send them.  No event is emitted."""
        with self.lock:
            self._n += 1
            cid = cid or make_id(f"{time.time()}-{self._n}")
            name = name or f"c{self._n}"
        if ports is None:
            ports = [("80/tcp", [("127.0.0.1", str(32768 + self._n))])]
        doc = {
            "Id": cid,
            "Created": "2026-11-25T00:00:00Z",
            "Path": "/bin/sleep",
            "State": {"Status": "running" if running else "exited", "Running": running,
                      "Paused": False, "Restarting": False, "Pid": 1000 + self._n,
                      "StartedAt": "2026-11-25T00:00:01Z"},
            "Image": "sha256:" + make_id("img-" + image),
            "Name": "/" + name,
            "HostConfig": {"NetworkMode": "default", "Links": None},
            "Config": {"Hostname": cid[:12], "Env": env or ["PATH=/bin"], "Image": image,
                       "Labels": labels or {},
                       "ExposedPorts": {p: {} for p, _ in ports}},
            "NetworkSettings": {
                "Ports": {p: (None if b is None else [{"HostIp": ip, "HostPort": hp} for ip, hp in b])
                          for p, b in ports},
                "Networks": {"bridge": {"IPAddress": "172.31.254.%d" % (2 + self._n % 250),
                                        "Gateway": "172.31.254.1", "GlobalIPv6Address": "",
                                        "MacAddress": "02:42:ac:1f:fe:02", "NetworkID": "n1"}},
            },
        }
        with self.lock:
            self.containers[cid] = doc
            self.cache.pop(cid, None)
        return cid

    def set_running(self, cid, running):
        with self.lock:
            st = self.containers[cid]["State"]
            st["Running"] = running
            st["Status"] = "running" if running else "exited"
            self.cache.pop(cid, None)

    def remove(self, cid):
        with self.lock:
            self.containers.pop(cid, None)
            self.cache.pop(cid, None)

    def running(self):
        with self.lock:
            return [c for c in self.containers.values() if c["State"]["Running"]]

    def fault_inspect(self, cid, *faults):
        """Faults for the next inspects of cid: 500, 404, "badjson", "cut", "hang",
        "huge" (a 33 MiB body)."""
        with self.lock:
            self.inspect_faults.setdefault(cid, []).extend(faults)

    # ---- events ----
    def event(self, action, cid, etype="container", attrs=None, image=None):
        """An event as this API version would send it."""
        image = image or (self.containers.get(cid, {}).get("Config", {}).get("Image", "bbx"))
        now = time.time_ns()
        if self.api and self._ver() < (1, 22):
            return {"status": action, "id": cid, "from": image, "time": now // 10**9}
        ev = {}
        if self._ver() < (1, 52):
            ev.update({"status": action, "id": cid, "from": image})
        a = {"image": image, "name": self.containers.get(cid, {}).get("Name", "/x")[1:]}
        a.update(attrs or {})
        ev.update({"Type": etype, "Action": action, "Actor": {"ID": cid, "Attributes": a},
                   "scope": "local", "time": now // 10**9, "timeNano": now})
        return ev

    def emit(self, *items):
        """Writes events (dicts) or raw bytes to every open event stream."""
        rs = b"\x1e" if self.events_framing == "json-seq" else b""
        data = b"".join(i if isinstance(i, bytes) else rs + (json.dumps(i) + "\n").encode() for i in items)
        self.call(self._write_streams, data)

    def start_container(self, cid):
        self.set_running(cid, True)
        self.emit(self.event("start", cid))

    def die(self, cid):
        self.set_running(cid, False)
        self.emit(self.event("die", cid))

    def cut(self, partial=b""):
        """Sends partial bytes, then drops every event stream connection."""
        def _cut():
            for w in list(self.streams):
                if partial:
                    w.write(b"%x\r\n%s\r\n" % (len(partial), partial))
                w.transport.abort()
            self.streams.clear()
        self.call(_cut)

    def wait_streams(self, n, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.stream_opens >= n:
                return
            time.sleep(0.02)
        raise AssertionError(f"event stream opened {self.stream_opens} times, wanted {n}")

    def _events_head(self):
        return (b"HTTP/1.1 200 OK\r\nContent-Type: " + self.events_ctype.encode() +
                b"\r\nTransfer-Encoding: chunked\r\n\r\n")

    def _write_streams(self, data):
        for w in list(self.streams):
            if w.is_closing():
                self.streams.remove(w)
                continue
            if w in self._headless:
                self._headless.discard(w)
                w.write(self._events_head())
            w.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _ver(self):
        if not self.api:
            return (1, 41)
        a, b = self.api.split(".")
        return (int(a), int(b))

    # ---- HTTP ----
    async def _client(self, reader, writer):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                method, target, _ = line.decode().split(" ", 2)
                headers = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode().partition(":")
                    headers[k.strip().lower()] = v.strip()
                if int(headers.get("content-length", "0")):
                    await reader.readexactly(int(headers["content-length"]))
                path = target.split("?", 1)[0]
                self.requests.append((method, path))
                keep = await self._route(method, path, writer)
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        except asyncio.CancelledError:
            raise
        finally:
            if writer not in self.streams:
                writer.close()

    def _respond(self, writer, status, body, ctype="application/json", extra=""):
        if isinstance(body, str):
            body = body.encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found",
                  500: "Internal Server Error"}.get(status, "X")
        hdr = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
               f"Content-Length: {len(body)}\r\n{extra}Server: fake-docker\r\n\r\n")
        writer.write(hdr.encode() + body)

    async def _route(self, method, path, writer):
        api_hdr = f"Api-Version: {self.api}\r\n" if self.api else ""
        if path == "/_ping":
            self._respond(writer, 200, "OK", "text/plain", api_hdr)
            return True
        if path == "/version":
            self._respond(writer, 200, json.dumps({"Version": "fake", "ApiVersion": self.api or "1.41"}))
            return True
        parts = path.split("/")
        if len(parts) < 3 or not parts[1].startswith("v"):
            self._respond(writer, 404, '{"message":"page not found"}')
            return True
        rest = "/" + "/".join(parts[2:])
        if self.min_api:
            want = tuple(int(x) for x in self.min_api.split("."))
            try:
                got = tuple(int(x) for x in parts[1][1:].split("."))
            except ValueError:
                got = (0, 0)
            if got < want:
                self._respond(writer, 400, json.dumps({
                    "message": f"client version {parts[1][1:]} is too old. Minimum supported API "
                               f"version is {self.min_api}, please upgrade your client to a newer "
                               "version"}))
                return True
        if rest == "/containers/json":
            with self.lock:
                fault = self.list_faults.pop(0) if self.list_faults else None
                body = json.dumps([{"Id": c["Id"], "Names": [c["Name"]], "Image": c["Config"]["Image"],
                                    "State": "running"} for c in self.containers.values()
                                   if c["State"]["Running"]])
            if fault == 500:
                self._respond(writer, 500, '{"message":"list exploded"}')
            elif fault == "badjson":
                self._respond(writer, 200, body[: len(body) // 2])
            else:
                self._respond(writer, 200, body)
            return True
        if rest.startswith("/containers/") and rest.endswith("/json"):
            cid = rest[len("/containers/"):-len("/json")]
            with self.lock:
                faults = self.inspect_faults.get(cid)
                fault = faults.pop(0) if faults else None
                doc = self.containers.get(cid)
                body = self.cache.get(cid)
                if body is None and doc:
                    body = self.cache[cid] = json.dumps(doc)
            if fault == "hang":
                await asyncio.sleep(3600)
            if fault == 500:
                self._respond(writer, 500, '{"message":"inspect exploded"}')
            elif fault == 404 or body is None:
                self._respond(writer, 404, '{"message":"No such container: %s"}' % cid)
            elif fault == "badjson":
                self._respond(writer, 200, body[: len(body) // 2] + "}}}")
            elif fault == "huge":  # a reply past register's cap (32 MiB)
                self._respond(writer, 200, body[:-1] + ',"Junk":"' + "x" * (33 << 20) + '"}')
            elif fault == "cut":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + body[:50].encode())
                await writer.drain()
                writer.transport.abort()
                return False
            else:
                self._respond(writer, 200, body)
            return True
        if rest == "/events":
            if self.events_status:
                self._respond(writer, self.events_status, '{"message":"events refused"}')
                return True
            if self.events_head_with_first_event:
                self._headless.add(writer)
            else:
                writer.write(self._events_head())
                await writer.drain()
            self.streams.append(writer)
            self.stream_opens += 1
            return False  # the connection now belongs to the stream
        self._respond(writer, 404, '{"message":"page not found"}')
        return True
