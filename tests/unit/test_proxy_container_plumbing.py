"""The proxy as a container or a Swarm service, against a fake engine: the archive and exec
plumbing, all-or-nothing changes over replicas, byte-exact restores, the descriptor's fields.

The fake engine keeps each container's files and process table and answers the exec commands
the adapter sends (busybox sh scripts, the proxy binary, kill) the way the real ones do.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from cdlib import config
from cdlib.errors import ConfigError, ProxyError
from cdlib.model import Backend, Routes
from cdlib.proxy import container as pc
from cdlib.proxy import image as pi
from cdlib.proxy.container import BB, ContainerProxy, DockerEngine, Replica, ServiceProxy

NGINX, HAPROXY = pi.BINARIES["nginx"], pi.BINARIES["haproxy"]
IMAGE = {"nginx": "cdlib/nginx:test", "haproxy": "cdlib/haproxy:test"}  # given: no dpkg in unit tests
BROKEN = b"cdlibt_broken"
BAD_KEY = b"cdlibt_bad_key"  # a key file holding this does not match its certificate (the fake binaries say)


class FakeContainer:
    def __init__(self, cid: str, name: str):
        self.id, self.name = cid, name
        self.files: dict[str, bytes] = {}
        self.procs: dict[int, tuple[str, str, int]] = {1: ("docker-init", "S", 0), 7: ("busybox", "S", 1)}
        self.next_pid = 20
        self.refuse_reload = False  # the master keeps its workers and logs an [emerg] (nginx)
        self.linger = 0  # state reads the old workers survive after a reload (the drain)
        self.lingering: dict[int, int] = {}
        self.signals: list[str] = []
        self.links: dict[str, str] = {}  # /cdlib/tls/<name> -> the name it links to
        self.modes: dict[str, str] = {}  # path -> what chmod made it

    def tls(self) -> dict[str, bytes]:
        """/cdlib/tls: name -> content (a link: b"-> target")."""
        out = {p.rsplit("/", 1)[1]: d for p, d in self.files.items() if p.startswith("/cdlib/tls/")}
        return out | {p.rsplit("/", 1)[1]: b"-> " + t.encode() for p, t in self.links.items()}

    def spawn(self, comm: str, ppid: int) -> int:
        pid = self.next_pid
        self.next_pid += 1
        self.procs[pid] = (comm, "S", ppid)
        return pid


class FakeEngine:
    """What DockerEngine offers the adapter, over containers held in memory."""

    def __init__(self, kind: str = "nginx"):
        self.kind = kind
        self.images = {IMAGE[kind]}
        self.containers: dict[str, FakeContainer] = {}  # by id
        self.stopped: set[str] = set()  # services left with no task by a removal that was killed
        self.services: dict[str, list[str]] = {}  # name -> container ids
        self.calls: list[tuple] = []
        self.archives: list[tuple[str, str, bytes, int]] = []

    # helpers
    def by_name(self, name: str) -> FakeContainer | None:
        return next((c for c in self.containers.values() if c.name == name), None)

    def _new(self, name: str) -> str:
        cid = f"{len(self.containers) + 1:064x}"
        self.containers[cid] = FakeContainer(cid, name)
        return cid

    def serving(self, cid: str) -> bool:
        c = self.containers.get(cid)
        if c is None:
            return False
        pid = int(c.files.get("/cdlib/" + self.pid_name(), b"0") or 0)
        return pid in c.procs

    def pid_name(self) -> str:
        return "nginx.pid" if self.kind == "nginx" else "haproxy.pid"

    # the engine
    def image_exists(self, ref):
        return ref in self.images

    def container(self, name):
        c = self.by_name(name)
        return None if c is None else {"id": c.id, "running": True, "name": c.name, "labels": {}}

    def run_container(self, name, image, labels):
        self.calls.append(("run", name, image))
        return self._new(name)

    def start_container(self, cid):
        pass

    def remove_container(self, cid):
        self.calls.append(("remove", cid))
        self.containers.pop(cid, None)

    def put_file(self, cid, path, data, mode=0o600):
        self.archives.append((cid, path, data, mode))
        self.containers[cid].files[path] = data

    def local_node(self):
        return "node-1"

    def node_hostname(self, node):
        return node

    def service(self, name):
        if name not in self.services:
            return None
        return {"id": name, "labels": {}, "mode": {}, "stopped": name in self.stopped}

    def create_service(self, name, image, labels, replicas):
        self.calls.append(("service", name, replicas))
        self.services[name] = [self._new(f"{name}.{slot}.task") for slot in range(1, (replicas or 1) + 1)]

    def remove_service(self, name):
        self.calls.append(("remove-service", name))
        self.stopped = self.stopped - {name}
        for cid in self.services.pop(name, []):
            self.containers.pop(cid, None)

    def tasks(self, name):
        return [{"container": cid, "node": "node-1", "slot": int(self.containers[cid].name.split(".")[-2]),
                 "state": "running"} for cid in self.services.get(name, [])]

    def exec(self, cid, argv, timeout=30):
        c = self.containers[cid]
        self.calls.append(("exec", c.name, tuple(argv)))
        if argv[:3] == [BB, "sh", "-c"]:
            return self._script(c, argv[3])
        if argv[0] == BB and argv[1] == "kill":
            return self._kill(c, argv[2][1:], [int(p) for p in argv[3:]])
        if argv[0] in (NGINX, HAPROXY):
            if "-t" in argv or (argv[0] == HAPROXY and "-c" in argv):
                path = argv[argv.index("-c" if argv[0] == NGINX else "-f") + 1]
                data = c.files.get(path, b"")
                for name in sorted(set(re.findall(rb"/cdlib/tls/([0-9a-f]{16}\.pem|[0-9a-f]{64}\.(?:crt|key))",
                                                  data))):
                    target = "/cdlib/tls/" + name.decode()
                    for suffix in ("", ".key") if name.endswith(b".pem") else ("",):
                        f = c.links.get(target + suffix)
                        content = c.files.get(f"/cdlib/tls/{f}" if f else target + suffix)
                        if content is None:
                            return 1, b"", f"nginx: [emerg] cannot load {target + suffix}: No such file\n".encode()
                        if BAD_KEY in content:
                            return 1, b"", (b"nginx: [emerg] SSL_CTX_use_PrivateKey(...) failed "
                                            b"(SSL: error:05800074:x509 certificate routines::key values mismatch)\n")
                if BROKEN in data:
                    line = data[:data.index(BROKEN)].count(b"\n") + 1
                    return 1, b"", (f'nginx: [emerg] unknown directive "cdlibt_broken" in {path}:{line}\n'
                                    "nginx: configuration file test failed\n").encode()
                return 0, b"", b""
            master = c.spawn(self.kind, 1)
            for _ in range(2):
                c.spawn(self.kind, master)
            c.files["/cdlib/" + self.pid_name()] = f"{master}\n".encode()
            return 0, b"", b""
        raise AssertionError(f"unexpected exec {argv}")

    def _tls_script(self, c: FakeContainer, script: str):
        """The scripts that list, link, check and remove the files in /cdlib/tls."""
        import hashlib

        def sums(names):
            return "".join(f"{hashlib.sha256(c.files[f'/cdlib/tls/{n}']).hexdigest()}  {n}\n" for n in names
                           if f"/cdlib/tls/{n}" in c.files).encode()

        if "ls -A1" in script:
            c.modes["/cdlib/tls"] = "700"
            names = sorted(c.tls())
            files = [n for n in names if n.endswith((".crt", ".key")) and f"/cdlib/tls/{n}" in c.files]
            return 0, "".join(f"{n}\n" for n in names).encode() + b"@@cdlib@@\n" + sums(files), b""
        out = b""
        for part in script.split(" && ")[1:]:
            words = part.split()
            if words[1:3] == ["ln", "-sf"]:
                c.links[f"/cdlib/tls/{words[4]}"] = words[3]
            elif words[1] == "sha256sum":
                out += sums(words[2:])
            elif words[1:3] == ["rm", "-f"]:
                for n in words[3:]:
                    c.files.pop(f"/cdlib/tls/{n}", None)
                    c.links.pop(f"/cdlib/tls/{n}", None)
            elif part != "true":
                raise AssertionError(f"unexpected tls script part {part!r}")
        return 0, out, b""

    def _script(self, c: FakeContainer, script: str):
        if f"cd {pc.TLS_DIR}" in script:
            return self._tls_script(c, script)
        if "@@cdlib@@" in script:
            return 0, self._state(c, script), b""
        out = b""
        for part in re.split(r"\s*;\s*", script):
            m = re.fullmatch(rf"{BB} chmod 644 (\S+) && {BB} mv -f (\S+) (\S+)(?: \|\| exit 7)?", part)
            if m:
                if m.group(2) not in c.files:
                    return 7, b"", b"mv: can't rename: No such file or directory"
                c.files[m.group(3)] = c.files.pop(m.group(2))
                continue
            m = re.fullmatch(rf"{BB} kill -(\w+) (\d+)", part)
            if m:
                return self._kill(c, m.group(1), [int(m.group(2))])
            if part.startswith(f"{BB} rm -f "):
                for path in part.split()[3:]:
                    c.files.pop(path, None)
                continue
            m = re.fullmatch(rf"{BB} printf '%s' '(.*)' > (\S+)", part)
            if m:
                c.files[m.group(2)] = m.group(1).encode()
                continue
            if part.startswith(f"{BB} mkdir -p") or part.startswith(f"{BB} rm -rf"):
                continue
            raise AssertionError(f"unexpected script part {part!r}")
        return 0, out, b""

    def _state(self, c: FakeContainer, script: str) -> bytes:
        for pid, left in list(c.lingering.items()):  # old workers exit after some reads
            if left <= 0:
                c.procs.pop(pid, None)
                del c.lingering[pid]
            else:
                c.lingering[pid] = left - 1
        pid_file = "/cdlib/" + self.pid_name()
        out = c.files.get(pid_file, b"") + b"@@cdlib@@\n" + c.files.get("/cdlib/.cdlib.loaded", b"") + b"@@cdlib@@\n"
        out += b"".join(f"{p} ({comm}) {st} {pp} 1 1 0\n".encode() for p, (comm, st, pp) in sorted(c.procs.items()))
        out += b"@@cdlib@@\n"
        log = c.files.get("/cdlib/error.log", b"")
        m = re.search(r"tail -c \+(\d+)", script)
        out += log[int(m.group(1)) - 1:] if m else f"{len(log)}\n".encode()
        out += b"@@cdlib@@\n"
        conf = "/cdlib/nginx.conf" if self.kind == "nginx" else "/cdlib/haproxy.cfg"
        if "echo 1" in script and conf in c.files:
            out += b"1\n" + c.files[conf]
        else:
            out += b"0\n"
        return out

    def _kill(self, c: FakeContainer, sig: str, pids: list[int]):
        c.signals.append(sig)
        for pid in pids:
            if pid not in c.procs:
                continue
            if sig in ("HUP", "USR2"):
                if c.refuse_reload:
                    c.files["/cdlib/error.log"] = c.files.get("/cdlib/error.log", b"") + (
                        b"[notice] 1#1: signal 1 (SIGHUP) received from 99, reconfiguring\n"
                        b"[emerg] 1#1: bind() to 127.0.0.1:9 failed (98: Address already in use)\n")
                    continue
                old = [p for p, (_, _, pp) in c.procs.items() if pp == pid]
                for _ in range(2):
                    c.spawn(self.kind, pid)
                for p in old:
                    c.lingering[p] = c.linger
                    if not c.linger:
                        c.procs.pop(p)
            else:  # QUIT, USR1, TERM, KILL: the master and its workers go
                for p in [p for p, (_, _, pp) in c.procs.items() if pp == pid] + [pid]:
                    c.procs.pop(p, None)
        return 0, b"", b""


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 0.001
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


@pytest.fixture(autouse=True)
def healthy_when_serving(monkeypatch):
    """The health probe asks the fake engine instead of connecting to a port."""
    monkeypatch.setattr(Replica, "healthy", lambda self: self.engine.serving(self.container))


def make(cls=ContainerProxy, kind="nginx", engine=None, **kw):
    engine = engine or FakeEngine(kind)
    clock = Clock()
    proxy = cls(kind, listen="127.0.0.1:18880", engine=engine, image=IMAGE[kind], clock=clock,
                sleep=clock.sleep, **kw)
    return proxy, engine


def backend(color: str, port: int) -> Backend:
    return Backend("cdlibt-demo", color, f"r-{color}", Routes(("/demo/",), ()), (("127.0.0.1", port),))


def broken_text(proxy, color="green", port=9002) -> str:
    text = proxy.render([backend(color, port)])
    return text.replace("events {", "cdlibt_broken on;\nevents {", 1)


# -- plumbing -------------------------------------------------------------------------------------------
def test_the_process_table_is_read_from_proc_stat_lines():
    text = "1 (docker-init) S 0 1 1\n26 (nginx) S 1 26 26\n27 (a (b) c) R 26 26 26\nbroken\n28 (nginx) Z 26 1 1\n"
    assert pc.parse_procs(text) == {1: ("docker-init", "S", 0), 26: ("nginx", "S", 1), 27: ("a (b) c", "R", 26),
                                    28: ("nginx", "Z", 26)}
    procs = pc.Procs(pc.parse_procs(text))
    assert procs.children(26) == {27} and procs.children(26, "nginx") == set()


@pytest.mark.parametrize("listen,port,expected", [("127.0.0.1:8880", 8881, "127.0.0.1:8881"), ("8880", 8882, "8882"),
                                                  ("[::1]:8880", 8881, "[::1]:8881")])
def test_listen_with_another_port_keeps_the_address_as_written(listen, port, expected):
    assert pc.listen_with_port(listen, port) == expected


def test_a_replica_file_differs_only_in_its_listen_line():
    nginx, _ = make()
    text = nginx.render([backend("blue", 9001)]).encode()
    moved = pc.retarget(text, "nginx", "127.0.0.1:18880", "127.0.0.1:18881")
    diff = [(a, b) for a, b in zip(text.splitlines(), moved.splitlines(), strict=True) if a != b]
    assert diff and all(b"18880" in a and b"18881" in b and b"listen" in a for a, b in diff)
    assert pc.retarget(text, "nginx", "127.0.0.1:18880", "127.0.0.1:18880") is text
    haproxy, _ = make(kind="haproxy")
    text = haproxy.render([backend("blue", 9001)]).encode()
    moved = pc.retarget(text, "haproxy", "127.0.0.1:18880", "127.0.0.1:18881")
    assert moved.count(b"bind 127.0.0.1:18881") == 1 and b"bind 127.0.0.1:18880" not in moved
    with pytest.raises(ProxyError, match="listen directive"):
        pc.retarget(b"events {}\n", "nginx", "127.0.0.1:18880", "127.0.0.1:18881")


class FakeApi:
    def __init__(self, fail=None):
        self.fail = fail
        self.archives = []

    def put_archive(self, cid, path, data):
        if self.fail:
            raise self.fail
        self.archives.append((cid, path, data))
        return True


class FakeClient:
    def __init__(self, api):
        self.api = api

    def close(self):
        pass


def test_put_file_sends_one_file_in_a_tar_archive_with_its_mode():
    engine = DockerEngine()
    engine._client = FakeClient(FakeApi())
    engine.put_file("c" * 64, "/cdlib/nginx.conf.staged", b"worker_processes 2;\n", 0o600)
    (cid, path, data), = engine._client.api.archives
    assert (cid, path) == ("c" * 64, "/cdlib")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member, = tar.getmembers()
        assert (member.name, member.mode, member.isfile()) == ("nginx.conf.staged", 0o600, True)
        assert tar.extractfile(member).read() == b"worker_processes 2;\n"


def test_docker_errors_become_one_proxy_error_line():
    import requests  # installed with docker
    engine = DockerEngine("tcp://127.0.0.1:1")
    engine._client = FakeClient(FakeApi(fail=requests.exceptions.ConnectionError("refused\nsecond line")))
    with pytest.raises(ProxyError) as info:
        engine.put_file("c" * 64, "/cdlib/x", b"x")
    assert "\n" not in str(info.value) and "tcp://127.0.0.1:1" in str(info.value)
    assert isinstance(info.value.__cause__, requests.exceptions.ConnectionError)


# -- one container ---------------------------------------------------------------------------------------
def test_first_apply_creates_the_container_delivers_validates_and_starts():
    proxy, engine = make()
    assert proxy.read_config() is None and proxy.master_pid() is None
    text = proxy.render([backend("blue", 9001)])
    timings = proxy.apply(text)
    assert set(timings) >= {"validate", "reload", "drain"}
    c = engine.by_name(proxy.name)
    assert proxy.name.startswith("cdlibpx-nginx-") and ("run", proxy.name, IMAGE["nginx"]) in engine.calls
    assert engine.archives[0][1:] == ("/cdlib/nginx.conf.staged", text.encode(), 0o600)  # private until accepted
    assert proxy.read_config() == text.encode() and "/cdlib/nginx.conf.staged" not in c.files
    marker = json.loads(c.files["/cdlib/.cdlib.loaded"])
    assert marker == {"sha256": pc.digest(text.encode()), "pid": proxy.master_pid()}


@pytest.mark.parametrize("kind,sig", [("nginx", "HUP"), ("haproxy", "USR2")])
def test_a_change_reloads_by_signal_and_waits_for_the_old_workers(kind, sig):
    proxy, engine = make(kind=kind)
    proxy.apply(proxy.render([backend("blue", 9001)]))
    c = engine.by_name(proxy.name)
    master, old = proxy.master_pid(), proxy.workers()
    c.linger = 3  # the old workers keep serving for a few reads after the reload
    proxy.apply(proxy.render([backend("green", 9002)]))
    assert c.signals == [sig]
    assert proxy.master_pid() == master and not (proxy.workers() & old)
    assert not (set(c.procs) & old)  # apply returned only once they were gone
    assert b"9002" in proxy.read_config()


def test_a_refused_candidate_changes_nothing():
    proxy, engine = make()
    proxy.apply(proxy.render([backend("blue", 9001)]))
    before, master, workers = proxy.read_config(), proxy.master_pid(), proxy.workers()
    with pytest.raises(ProxyError, match=r"refused.*unknown directive \[\.\.\.\].*line \d+") as info:
        proxy.apply(broken_text(proxy))
    assert "cdlibt_broken" not in str(info.value)  # the file is never quoted
    c = engine.by_name(proxy.name)
    assert proxy.read_config() == before and proxy.master_pid() == master and proxy.workers() == workers
    assert "/cdlib/nginx.conf.staged" not in c.files and c.signals == []


def test_a_refused_first_configuration_leaves_no_container():
    proxy, engine = make()
    with pytest.raises(ProxyError, match="refused"):
        proxy.apply(broken_text(proxy))
    assert engine.containers == {} and proxy.read_config() is None


def test_a_refused_reload_puts_the_previous_bytes_back():
    proxy, engine = make()
    proxy.apply(proxy.render([backend("blue", 9001)]))
    before = proxy.read_config()
    engine.by_name(proxy.name).refuse_reload = True
    with pytest.raises(ProxyError, match="refused the reload.*put back"):
        proxy.apply(proxy.render([backend("green", 9002)]))
    assert proxy.read_config() == before


def test_restore_of_the_running_bytes_sends_no_signal_and_restore_none_removes_the_container():
    proxy, engine = make()
    proxy.apply(proxy.render([backend("blue", 9001)]))
    prior = proxy.read_config()
    proxy.apply(proxy.render([backend("green", 9002)]))
    c = engine.by_name(proxy.name)
    proxy.restore(prior)
    assert proxy.read_config() == prior and c.signals == ["HUP", "HUP"]
    proxy.restore(prior)  # nothing to do: the marker says the master loaded these bytes
    assert c.signals == ["HUP", "HUP"]
    proxy.restore(None)
    assert engine.containers == {} and proxy.read_config() is None
    proxy.restore(None)  # idempotent


def test_ensure_running_serves_the_empty_configuration_once():
    proxy, engine = make()
    proxy.ensure_running()
    assert proxy.read_config() == proxy.render([]).encode() and proxy.master_pid() is not None
    calls = len(engine.calls)
    proxy.ensure_running()
    assert not [c for c in engine.calls[calls:] if c[0] == "exec" and c[2][0] == NGINX]


def test_a_missing_image_names_proxy_image_and_how_to_build_it():
    proxy, engine = make()
    engine.images.clear()
    with pytest.raises(ConfigError, match=r"proxy\.image: .*cdlib proxy image --kind nginx") as info:
        proxy.apply(proxy.render([]))
    assert info.value.exit_code == 2 and engine.containers == {}


def test_preflight_validates_in_a_throwaway_container_it_removes():
    proxy, engine = make()
    proxy.preflight()
    assert engine.containers == {}
    names = [c[1] for c in engine.calls if c[0] == "run"]
    assert len(names) == 1 and names[0].startswith("cdlibpx-preflight-")


def test_a_name_must_start_with_cdlibpx():
    with pytest.raises(ConfigError, match="proxy.name"):
        make(name="shop-proxy")


# -- a service with replicas -----------------------------------------------------------------------------
def test_service_replicas_listen_on_consecutive_ports_and_show_their_digests():
    proxy, engine = make(ServiceProxy, replicas=2)
    text = proxy.render([backend("blue", 9001)])
    proxy.apply(text)
    assert ("service", proxy.name, 2) in engine.calls
    reps = proxy.status()["replicas"]
    assert [r["listen"] for r in reps] == ["127.0.0.1:18880", "127.0.0.1:18881"]
    first, second = (engine.containers[cid] for cid in engine.services[proxy.name])
    assert first.files["/cdlib/nginx.conf"] == text.encode() == proxy.read_config()
    assert second.files["/cdlib/nginx.conf"] == pc.retarget(text.encode(), "nginx", "127.0.0.1:18880",
                                                            "127.0.0.1:18881")
    assert [r["digest"] for r in reps] == [pc.digest(first.files["/cdlib/nginx.conf"]),
                                           pc.digest(second.files["/cdlib/nginx.conf"])]


def test_global_mode_replicas_share_the_listen_address():
    proxy, engine = make(ServiceProxy, mode="global")
    proxy.apply(proxy.render([]))
    assert ("service", proxy.name, None) in engine.calls


def test_a_replica_refusing_validation_means_no_replica_changes():
    proxy, engine = make(ServiceProxy, replicas=2)
    proxy.apply(proxy.render([backend("blue", 9001)]))
    first, second = (engine.containers[cid] for cid in engine.services[proxy.name])
    before = [dict(first.files), dict(second.files)]
    real_exec = engine.exec

    def exec_refusing_on_the_second(cid, argv, timeout=30):
        if cid == second.id and argv[0] == NGINX and "-t" in argv:
            return 1, b"", b"nginx: [emerg] something only this replica dislikes\n"
        return real_exec(cid, argv, timeout)

    engine.exec = exec_refusing_on_the_second
    with pytest.raises(ProxyError, match=r"refused .* in cdlibpx-nginx-18880\.2"):
        proxy.apply(proxy.render([backend("green", 9002)]))
    assert [first.files, second.files] == before and first.signals == second.signals == []


def test_a_replica_failing_its_reload_puts_back_the_replicas_already_switched():
    proxy, engine = make(ServiceProxy, replicas=3)
    proxy.apply(proxy.render([backend("blue", 9001)]))
    replicas = [engine.containers[cid] for cid in engine.services[proxy.name]]
    before = [r.files["/cdlib/nginx.conf"] for r in replicas]
    replicas[1].refuse_reload = True
    with pytest.raises(ProxyError, match=r"refused the reload in cdlibpx-nginx-18880\.2.*put back"):
        proxy.apply(proxy.render([backend("green", 9002)]))
    assert [r.files["/cdlib/nginx.conf"] for r in replicas] == before
    assert replicas[0].signals == ["HUP", "HUP"]  # switched, then put back
    assert replicas[2].signals == [] and "/cdlib/nginx.conf.staged" not in replicas[2].files
    loaded = json.loads(replicas[0].files["/cdlib/.cdlib.loaded"])
    assert loaded["sha256"] == pc.digest(before[0])


def test_a_replica_on_a_node_with_no_known_engine_is_refused_before_any_change():
    proxy, engine = make(ServiceProxy, replicas=2)
    proxy.apply(proxy.render([]))
    engine.tasks = lambda name: [{"container": cid, "node": "node-2", "slot": i, "state": "running"}
                                 for i, cid in enumerate(engine.services[name], start=1)]
    with pytest.raises(ProxyError, match="proxy.engines.node-2"):
        proxy.apply(proxy.render([backend("blue", 9001)]))


def test_restore_none_removes_the_service():
    proxy, engine = make(ServiceProxy, replicas=2)
    proxy.apply(proxy.render([]))
    proxy.restore(None)
    assert engine.services == {} and engine.containers == {}


def test_a_service_a_killed_removal_left_without_tasks_is_removed_then_created_again_by_the_next_change():
    proxy, engine = make(ServiceProxy, replicas=2)
    proxy.apply(proxy.render([]))
    for cid in engine.services[proxy.name]:  # the removal stopped its tasks, then the process was killed
        engine.containers.pop(cid)
    engine.services[proxy.name] = []
    engine.stopped = {proxy.name}
    engine.calls.clear()
    text = proxy.render([backend("blue", 9001)])
    proxy.apply(text)
    assert [c for c in engine.calls if c[0] in ("remove-service", "service")] == [
        ("remove-service", proxy.name), ("service", proxy.name, 2)]
    assert proxy.read_config() == text.encode()
    assert [r["listen"] for r in proxy.status()["replicas"]] == ["127.0.0.1:18880", "127.0.0.1:18881"]


def test_status_leaves_a_stopped_service_alone():
    proxy, engine = make(ServiceProxy, replicas=2)
    proxy.apply(proxy.render([]))
    engine.stopped = {proxy.name}
    engine.calls.clear()
    proxy.status()
    assert not [c for c in engine.calls if c[0] == "remove-service"]


# -- the image ------------------------------------------------------------------------------------------
def test_tag_versions_are_valid_docker_tags():
    assert pi.tag_version("1.22.1-9+deb12u11") == "1.22.1-9-deb12u11"
    assert pi.tag_version("1:2.6.12-1+deb12u4") == "1-2.6.12-1-deb12u4"


def test_the_build_context_holds_the_files_users_and_start_script(tmp_path):
    lib = tmp_path / "libfake.so.1"
    lib.write_bytes(b"\x7fELF")
    link = tmp_path / "libfake.so"
    link.symlink_to(lib)
    rec = pi.Recipe("nginx", "1.0", (str(link),), ("/cdlib", "/var/lib/nginx"), "abc")
    ctx = pi.write_context(rec, tmp_path / "ctx")
    root = ctx / "rootfs"
    assert (root / str(link).lstrip("/")).read_bytes() == b"\x7fELF"  # what the link names, as a file
    assert "www-data" in (root / "etc/passwd").read_text() and "nogroup" in (root / "etc/group").read_text()
    assert (root / "cdlib").is_dir() and (root / "var/lib/nginx").is_dir()
    start = (root / pi.START_SCRIPT.lstrip("/")).read_text()
    assert "/usr/sbin/nginx -p /cdlib/ -c /cdlib/nginx.conf" in start and "sleep" in start
    dockerfile = (ctx / "Dockerfile").read_text()
    assert dockerfile.startswith("FROM scratch") and 'cdlib.proxy.recipe="abc"' in dockerfile


def test_an_unknown_kind_has_no_image():
    with pytest.raises(ProxyError, match="expected one of nginx, haproxy"):
        pi.recipe("traefik")


# -- the descriptor ---------------------------------------------------------------------------------------
BASE = {"service": "shop", "image": {"repository": "127.0.0.1:5000/shop", "tag": "v1"}, "port": 8080}


def parse(proxy: dict):
    return config.parse(dict(BASE, proxy=proxy), "svc/cdlib.yml", env={})


def test_proxy_run_defaults_to_a_process():
    spec = parse({"kind": "nginx"})
    assert (spec.proxy.run, spec.proxy.name, spec.proxy.replicas, spec.proxy.mode) == ("process", None, 1,
                                                                                         "replicated")


def test_proxy_run_service_fields():
    spec = parse({"kind": "haproxy", "run": "service", "name": "cdlibpx-edge", "replicas": 3,
                  "engines": {"node-2": "tcp://10.0.0.2:2376"}})
    p = spec.proxy
    assert (p.run, p.name, p.replicas, p.engines) == ("service", "cdlibpx-edge", 3,
                                                      (("node-2", "tcp://10.0.0.2:2376"),))


@pytest.mark.parametrize("proxy,key", [
    ({"run": "pod"}, "proxy.run"),
    ({"run": "container", "name": "edge"}, "proxy.name"),
    ({"run": "container", "replicas": 2}, "proxy.replicas"),
    ({"name": "cdlibpx-a"}, "proxy.name"),
    ({"run": "service", "mode": "global", "replicas": 2}, "proxy.replicas"),
    ({"run": "service", "mode": "everywhere"}, "proxy.mode"),
    ({"run": "service", "replicas": 0}, "proxy.replicas"),
    ({"run": "service", "engines": {"node-2": "10.0.0.2:2376"}}, "proxy.engines.node-2"),
    ({"run": "container", "image": "bad image"}, "proxy.image"),
    ({"run": "service", "replicas": 2, "tls_listen": "127.0.0.1:8443"}, "proxy.replicas"),
])
def test_bad_placement_fields_are_one_line_naming_the_field(proxy, key):
    with pytest.raises(ConfigError) as info:
        parse(proxy)
    assert info.value.exit_code == 2 and "\n" not in str(info.value) and f"{key}:" in str(info.value)


def test_wiring_opens_the_container_adapters_without_importing_docker():
    code = ("import sys, json; from cdlib import config; from cdlib.wiring import open_proxy\n"
            "base = {'service': 'shop', 'image': {'repository': 'r/shop', 'tag': 'v1'}, 'port': 8080}\n"
            "c = open_proxy(config.parse(dict(base, proxy={'run': 'container'}), 'x.yml', env={}))\n"
            "s = open_proxy(config.parse(dict(base, proxy={'run': 'service', 'replicas': 2}), 'x.yml', env={}))\n"
            "print(json.dumps([type(c).__name__, c.name, type(s).__name__, s.replicas, 'docker' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert json.loads(out.stdout) == ["ContainerProxy", "cdlibpx-nginx-8880", "ServiceProxy", 2, False]


def test_read_config_is_the_rendered_text_whichever_replica_answers():
    proxy, engine = make(ServiceProxy, replicas=2)
    text = proxy.render([backend("blue", 9001)])
    proxy.apply(text)
    engine.services[proxy.name].pop(0)  # slot 1's task is being replaced: slot 2 answers
    assert proxy.read_config() == text.encode()
    assert [r["listen"] for r in proxy.status()["replicas"]] == ["127.0.0.1:18881"]


def test_plan_apply_names_a_replica_that_runs_another_configuration():
    proxy, engine = make(ServiceProxy, replicas=2)
    text = proxy.render([backend("blue", 9001)])
    assert proxy.plan_apply(text)[0] == "reload"  # nothing runs yet
    proxy.apply(text)
    assert proxy.plan_apply(text) == ("none", "the configuration is unchanged on every replica")
    second = engine.containers[engine.services[proxy.name][1]]
    second.files.pop("/cdlib/nginx.conf")  # a task Swarm replaced: no configuration in it
    mode, why = proxy.plan_apply(text)
    assert mode == "reload" and why.startswith(f"{proxy.name}.2 of the proxy service")
    assert proxy.read_config() == text.encode()  # the first replica alone would say "unchanged"


# -- HTTPS: certificate and key files delivered into the replicas -----------------------------------------
CERT = b"-----BEGIN CERTIFICATE-----\ncdlibt-cert-one\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\ncdlibt-key-one\n-----END PRIVATE KEY-----\n"


def tls_backend(tmp_path, color: str = "blue", port: int = 9001) -> Backend:
    cert, key = tmp_path / "site.pem", tmp_path / "site.key"
    if not cert.exists():
        cert.write_bytes(CERT)
        key.write_bytes(KEY)
    routes = Routes((), ("shop.test",), tls_cert=str(cert), tls_key=str(key))
    return Backend("cdlibt-shop", color, f"r-{color}", routes, (("127.0.0.1", port),))


def tls_make(cls=ContainerProxy, kind="nginx", **kw):
    return make(cls, kind=kind, tls_listen="127.0.0.1:18443", **kw)


def tls_state(engine) -> list[tuple[bytes | None, dict[str, bytes]]]:
    return [(c.files.get("/cdlib/nginx.conf") or c.files.get("/cdlib/haproxy.cfg"), c.tls())
            for c in engine.containers.values()]


@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
def test_the_rendered_text_names_the_files_inside_the_container_by_their_content(kind, tmp_path):
    proxy, _engine = tls_make(kind=kind)
    b = tls_backend(tmp_path)
    text = proxy.render([b])
    crt, key = pc.tls_path(CERT, "cert"), pc.tls_path(KEY, "key")
    assert crt == f"/cdlib/tls/{pc.digest(CERT)}.crt" and key == f"/cdlib/tls/{pc.digest(KEY)}.key"
    if kind == "nginx":
        assert f"ssl_certificate {crt};" in text and f"ssl_certificate_key {key};" in text
    else:
        from cdlib.proxy.haproxy import tls_files, tls_link

        link = tls_link("/cdlib", crt, key)
        assert tls_files(text) == [(link, crt, key)] and f"crt {link}" in text
    # the host's files appear only on the comment lines saying where each path comes from
    lines = [line for line in text.splitlines() if str(tmp_path) in line]
    assert sorted(lines) == sorted([f"# tls-source {crt} {b.routes.tls_cert}", f"# tls-source {key} {b.routes.tls_key}"])
    assert "cdlibt-key-one" not in text and "# tls material sha256:" in text
    # a renewal in place (same files, new content) renders another text, naming other paths
    (tmp_path / "site.pem").write_bytes(CERT.replace(b"one", b"two"))
    renewed = proxy.render([b])
    assert renewed != text and pc.tls_path(CERT.replace(b"one", b"two"), "cert") in renewed and crt not in renewed


@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
def test_apply_delivers_the_files_private_to_root_before_validation(kind, tmp_path):
    proxy, engine = tls_make(kind=kind)
    text = proxy.render([tls_backend(tmp_path)])
    proxy.apply(text)
    c = engine.by_name(proxy.name)
    files = {p: (d, m) for _cid, p, d, m in engine.archives if p.startswith("/cdlib/tls/")}
    assert files == {pc.tls_path(CERT, "cert"): (CERT, 0o600), pc.tls_path(KEY, "key"): (KEY, 0o600)}
    assert c.modes["/cdlib/tls"] == "700"
    order = [p for _cid, p, _d, _m in engine.archives]
    assert order.index(pc.tls_path(KEY, "key")) < order.index(f"/cdlib/{c_conf(kind)}.staged")
    if kind == "haproxy":
        assert sorted(c.links.values()) == sorted(n.rsplit("/", 1)[1] for n in files)
    assert proxy.read_config() == text.encode()
    # the key's content travels only in the archive: never on a command line
    assert not [call for call in engine.calls if b"cdlibt-key-one" in repr(call).encode()]


def c_conf(kind: str) -> str:
    return "nginx.conf" if kind == "nginx" else "haproxy.cfg"


@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
def test_a_key_that_does_not_match_is_refused_and_nothing_changes(kind, tmp_path):
    proxy, engine = tls_make(ServiceProxy, kind=kind, mode="global")
    b = tls_backend(tmp_path)
    proxy.apply(proxy.render([b]))
    before = tls_state(engine)
    (tmp_path / "site.key").write_bytes(KEY.replace(b"one", b"cdlibt_bad_key"))
    with pytest.raises(ProxyError, match="key values mismatch") as info:
        proxy.apply(proxy.render([b]))
    assert "cdlibt_bad_key" not in str(info.value) and "PRIVATE KEY" not in str(info.value)
    assert tls_state(engine) == before  # the configuration and /cdlib/tls as they were: the new key is gone


def test_a_renewal_goes_to_every_replica_or_none_with_the_previous_files_back(tmp_path):
    proxy, engine = tls_make(kind="nginx", cls=ServiceProxy, mode="global")
    engine.tasks = lambda name: [{"container": cid, "node": f"node-{i}", "slot": None, "state": "running"}
                                 for i, cid in enumerate(engine.services.get(name, []), start=1)]
    engine.create_service = lambda name, image, labels, replicas: engine.services.setdefault(
        name, [engine._new(f"{name}.{i}.task") for i in (1, 2, 3)])
    proxy.engines = {}
    proxy._engine_for = lambda node, local: (engine, node)  # every node's engine is the fake
    b = tls_backend(tmp_path)
    proxy.apply(proxy.render([b]))
    replicas = [engine.containers[cid] for cid in engine.services[proxy.name]]
    before = tls_state(engine)
    (tmp_path / "site.pem").write_bytes(CERT.replace(b"one", b"two"))
    (tmp_path / "site.key").write_bytes(KEY.replace(b"one", b"two"))
    renewed = proxy.render([b])
    replicas[1].refuse_reload = True
    with pytest.raises(ProxyError, match=r"refused the reload in .*put back"):
        proxy.apply(renewed)
    assert tls_state(engine) == before
    assert replicas[0].signals == ["HUP", "HUP"] and replicas[2].signals == []
    # the renewal goes through: every replica keeps the new files and the previous ones, nothing else
    replicas[1].refuse_reload = False
    proxy.apply(renewed)
    new = {pc.tls_path(CERT.replace(b"one", b"two"), "cert"), pc.tls_path(KEY.replace(b"one", b"two"), "key")}
    old = {pc.tls_path(CERT, "cert"), pc.tls_path(KEY, "key")}
    assert all(set(f"/cdlib/tls/{n}" for n in r.tls()) == new | old for r in replicas)
    assert all(r.files["/cdlib/nginx.conf"] == renewed.encode() for r in replicas)
    # one more change prunes the files no configuration of the last two names
    (tmp_path / "site.pem").write_bytes(CERT.replace(b"one", b"three"))
    proxy.apply(proxy.render([b]))
    assert all(not (set(f"/cdlib/tls/{n}" for n in r.tls()) & old) for r in replicas)


def test_restore_delivers_what_a_replica_lacks_from_the_file_the_text_names(tmp_path):
    proxy, engine = tls_make()
    b = tls_backend(tmp_path)
    text = proxy.render([b])
    proxy.apply(text)
    c = engine.by_name(proxy.name)
    proxy.apply(proxy.render([backend("green", 9002)]))  # no HTTPS route any more
    for name in list(c.tls()):  # a replica that lost its files (a task Swarm replaced)
        c.files.pop(f"/cdlib/tls/{name}", None)
    other, _ = tls_make(engine=engine)  # another process: nothing rendered, only the bytes to restore
    other.restore(text.encode())
    assert other.read_config() == text.encode() and c.tls() == {pc.tls_path(CERT, "cert")[11:]: CERT,
                                                                 pc.tls_path(KEY, "key")[11:]: KEY}
    # the file changed since: the path it should fill is not its content any more, so it is refused
    proxy.apply(proxy.render([backend("green", 9002)]))
    for name in list(c.tls()):
        c.files.pop(f"/cdlib/tls/{name}", None)
    (tmp_path / "site.key").write_bytes(KEY.replace(b"one", b"two"))
    third, _ = tls_make(engine=engine)
    with pytest.raises(ProxyError, match=r"site\.key changed since the configuration naming it") as info:
        third.restore(text.encode())
    assert "cdlibt-key" not in str(info.value)


def test_an_unreadable_tls_file_is_named_and_never_quoted(tmp_path):
    proxy, _ = tls_make()
    b = tls_backend(tmp_path)
    (tmp_path / "site.key").unlink()
    with pytest.raises(ProxyError, match=r"TLS file .*site\.key"):
        proxy.render([b])


def test_several_replicas_of_a_replicated_service_cannot_share_the_https_port():
    with pytest.raises(ConfigError, match=r"proxy\.replicas: expected 1 with proxy\.tls_listen") as info:
        tls_make(ServiceProxy, replicas=2)
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    tls_make(ServiceProxy, replicas=1)
    tls_make(ServiceProxy, mode="global")


def test_https_with_a_proxy_container_or_a_single_replica_service_is_accepted():
    for placement in ({"run": "container"}, {"run": "service"}, {"run": "service", "mode": "global"}):
        spec = parse({"kind": "nginx", "tls_listen": "127.0.0.1:8443", **placement})
        assert spec.proxy.tls_listen == "127.0.0.1:8443"
