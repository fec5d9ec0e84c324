#!/usr/bin/python3
"""A throw-away one-node Ceph cluster for the rbd plugin's tests and
bench: one ceph-mon, one ceph-mgr, one ceph-osd on the memstore object
store (data in RAM), pool size 1, everything under one temp dir,
loopback only.  Every daemon's PID is kept; stop() sends them SIGTERM
(SIGKILL after a bound) and removes the directory.

    cluster = CephCluster(cephx=False)
    cluster.start()             # about 10 s here
    cluster.rbd("create", "--size", "64M", "rbd/disk")
    ... serve with: nbdsrv rbd conf=cluster.conf image=disk
    cluster.stop()

Run as a script it starts a cluster, prints its CEPH_CONF and waits
for ^C (or SIGTERM), then stops it:

    /usr/bin/python3 tests/integration/ceph_cluster.py [--cephx]

With cephx=True authentication is on: client.admin's keyring is where
ceph.conf says, so `ceph` and `rbd` work as usual, and a second user
client.nbdtest, allowed only the rbd profile, has its key in
cluster.user_keyring, found nowhere else (for id= and keyring=).
"""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

POOL = "rbd"
PG_NUM = 8
USER = "nbdtest"             # the extra cephx user
START_TIMEOUT = 120.0        # mon + mgr + osd + pool, on a busy machine
STOP_TIMEOUT = 15.0          # per daemon, after SIGTERM
CLI_TIMEOUT = 60.0           # one ceph/rbd command
MON_PORTS = (20000, 32000)   # below ip_local_port_range, above 6800-7300


def free_port():
    """A TCP port on 127.0.0.1 that nothing uses just now, below the
    kernel's ephemeral range: a port the kernel hands out (bind to 0)
    is soon handed out again to some other loopback connection, and
    the monitor binds it only after mkfs, a second later."""
    rnd = random.Random()
    for _ in range(1000):
        port = rnd.randrange(MON_PORTS[0], MON_PORTS[1])
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port for the monitor in %d-%d" % MON_PORTS)


class CephCluster:
    def __init__(self, cephx=False, device_bytes=2 << 30):
        self.cephx = cephx
        self.device_bytes = device_bytes
        self.dir = None
        self.conf = None
        self.procs = {}          # daemon name -> Popen
        self.user_keyring = None

    # ------------------------------------------------------------ CLI

    @property
    def env(self):
        env = dict(os.environ)
        env["CEPH_CONF"] = self.conf
        return env

    def cli(self, *args, check=True, timeout=CLI_TIMEOUT):
        """Run a Ceph command-line tool on this cluster; its stdout."""
        r = subprocess.run(list(args), env=self.env, capture_output=True,
                           text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise RuntimeError("%s failed (%d): %s"
                               % (" ".join(args), r.returncode,
                                  r.stderr.strip()))
        return r.stdout

    def ceph(self, *args, **kw):
        return self.cli("ceph", *args, **kw)

    def ceph_settled(self, *args, tries=10):
        """A ceph command run just after the monitor changed the maps:
        for a moment it may answer 'problem getting command
        descriptions' (EPERM), seen now and then on a busy machine.
        Tried again, TRIES times at most, half a second apart."""
        for attempt in range(tries):
            try:
                return self.ceph(*args)
            except RuntimeError as e:
                if ("command descriptions" not in str(e)
                        or attempt == tries - 1):
                    raise
                time.sleep(0.5)

    def rbd(self, *args, **kw):
        return self.cli("rbd", *args, **kw)

    # ---------------------------------------------------------- start

    def _write_conf(self, fsid, port):
        d = self.dir
        auth = "cephx" if self.cephx else "none"
        text = f"""[global]
fsid = {fsid}
mon host = v1:127.0.0.1:{port}
mon initial members = a
public addr = 127.0.0.1
ms bind ipv4 = true
ms bind ipv6 = false
ms bind msgr2 = false
auth cluster required = {auth}
auth service required = {auth}
auth client required = {auth}
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
run dir = {d}/run
log file = {d}/log/$name.log
admin socket = {d}/run/$name.asok
mon data = {d}/mon/$cluster-$id
osd data = {d}/osd/$cluster-$id
mgr data = {d}/mgr/$cluster-$id
osd objectstore = memstore
osd fast shutdown = false
memstore device bytes = {self.device_bytes}
osd max object name len = 460
osd max object namespace len = 64
[mon]
keyring = $mon_data/keyring
[mgr]
keyring = $mgr_data/keyring
[osd]
keyring = $osd_data/keyring
[client]
keyring = {d}/$name.keyring
"""
        with open(self.conf, "w") as f:
            f.write(text)

    def _daemon(self, name, args):
        """Start a daemon in the foreground and keep its PID."""
        out = open(os.path.join(self.dir, "log", name + ".out"), "wb")
        self.procs[name] = subprocess.Popen(
            args, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT)
        out.close()

    def output(self, name):
        """The last lines a daemon wrote to its stdout and stderr (its
        log file proper is in the temp dir, removed by stop())."""
        try:
            with open(os.path.join(self.dir, "log", name + ".out"),
                      errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-5:])
        except OSError:
            return "(no output)"

    def _wait(self, what, ready, timeout=START_TIMEOUT):
        """Poll READY() until true; fail naming WHAT after TIMEOUT."""
        deadline = time.monotonic() + timeout
        while True:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(
                        "ceph %s exited with %d while waiting for %s: %s"
                        % (name, p.returncode, what, self.output(name)))
            if ready():
                return
            if time.monotonic() > deadline:
                raise RuntimeError("ceph: no %s after %.0f s: see %s/log"
                                   % (what, timeout, self.dir))
            time.sleep(0.2)

    def _quiet(self, *args):
        """True if the ceph command succeeds (short timeout)."""
        try:
            self.cli("ceph", "--connect-timeout", "5", *args, timeout=10)
            return True
        except (RuntimeError, subprocess.TimeoutExpired):
            return False

    def _keyrings(self):
        d = self.dir
        mon = os.path.join(d, "mon.keyring")
        admin = os.path.join(d, "client.admin.keyring")
        self.cli("ceph-authtool", "--create-keyring", mon, "--gen-key",
                 "-n", "mon.", "--cap", "mon", "allow *")
        self.cli("ceph-authtool", "--create-keyring", admin, "--gen-key",
                 "-n", "client.admin", "--cap", "mon", "allow *",
                 "--cap", "osd", "allow *", "--cap", "mgr", "allow *",
                 "--cap", "mds", "allow *")
        self.cli("ceph-authtool", mon, "--import-keyring", admin)
        return mon

    def start(self, tries=2):
        """Start the cluster; on a failure, stop what was started and
        try again once from scratch (a new directory and port), since a
        port can be taken between choosing it and the monitor binding
        it.  The test is of the rbd plugin, not of the cluster."""
        for attempt in range(tries):
            self.dir = tempfile.mkdtemp(prefix="ceph-")
            self.conf = os.path.join(self.dir, "ceph.conf")
            try:
                self._start()
                return self
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                self.stop()
                if attempt == tries - 1:
                    raise
                print("ceph_cluster: starting again after: %s" % e,
                      file=sys.stderr)
            except BaseException:
                self.stop()
                raise
        return self

    def _start(self):
        d = self.dir
        for sub in ("run", "log", "mon", "osd/ceph-0", "mgr/ceph-x"):
            os.makedirs(os.path.join(d, sub))
        fsid, port = str(uuid.uuid4()), free_port()
        self._write_conf(fsid, port)
        monmap = os.path.join(d, "monmap")
        # --addv with an explicit v1 address: plain --add records any
        # port but 6789 as v2, and v1 clients then hang.
        self.cli("monmaptool", "--create", "--addv", "a",
                 "[v1:127.0.0.1:%d]" % port, "--fsid", fsid, monmap)
        mkfs = ["ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap]
        if self.cephx:
            mkfs += ["--keyring", self._keyrings()]
        self.cli(*mkfs)
        self._daemon("mon", ["ceph-mon", "-i", "a", "-f"])
        self._wait("monitor", lambda: self._quiet("mon", "stat"))
        if self.cephx:
            self.ceph("auth", "get-or-create", "mgr.x", "mon",
                      "allow profile mgr", "osd", "allow *", "mds",
                      "allow *", "-o", d + "/mgr/ceph-x/keyring")
        self._daemon("mgr", ["ceph-mgr", "-i", "x", "-f"])
        osd_uuid = str(uuid.uuid4())
        self.ceph("osd", "new", osd_uuid, "0")
        if self.cephx:
            self.ceph("auth", "get-or-create", "osd.0", "mon",
                      "allow profile osd", "mgr", "allow profile osd",
                      "osd", "allow *", "-o", d + "/osd/ceph-0/keyring")
        self.cli("ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
        self.ceph("osd", "crush", "add", "osd.0", "1.0", "root=default",
                  "host=localhost")
        self.start_osd()
        self.ceph_settled("osd", "pool", "create", POOL, str(PG_NUM))
        self.rbd("pool", "init", POOL)
        self.wait_active()
        if self.cephx:
            self.user_keyring = os.path.join(d, "keys", USER + ".keyring")
            os.makedirs(os.path.dirname(self.user_keyring))
            self.ceph("auth", "get-or-create", "client." + USER, "mon",
                      "profile rbd", "osd", "profile rbd pool=" + POOL,
                      "mgr", "profile rbd pool=" + POOL,
                      "-o", self.user_keyring)

    # ---------------------------------------------------------- state

    def osd_up(self):
        try:
            out = self.cli("ceph", "--connect-timeout", "5", "osd", "dump",
                           "-f", "json", timeout=10)
        except (RuntimeError, subprocess.TimeoutExpired):
            return False
        osds = json.loads(out)["osds"]
        return len(osds) == 1 and osds[0]["up"] == 1

    def pgs_active(self):
        try:
            out = self.cli("ceph", "--connect-timeout", "5", "pg", "stat",
                           "-f", "json", timeout=10)
        except (RuntimeError, subprocess.TimeoutExpired):
            return False
        stat = json.loads(out)
        states = stat.get("pg_summary", stat).get("num_pg_by_state", [])
        total = sum(s["num"] for s in states)
        active = sum(s["num"] for s in states
                     if "active" in s["name"].split("+")
                     and "peering" not in s["name"])
        return total > 0 and total == active

    def wait_active(self, timeout=START_TIMEOUT):
        """Until the OSD is up and every placement group active."""
        self._wait("OSD up", self.osd_up, timeout)
        self._wait("active placement groups", self.pgs_active, timeout)

    def start_osd(self):
        """Start (or restart) the OSD and wait until it serves.

        The OSD is placed in the CRUSH map by _start, not by itself: an
        OSD asks the monitor for that at every start, and that command
        now and then came back 'wrong fsid' (EPERM), which makes the
        OSD exit (seen at first start in make bench, and on restarts).
        """
        self._daemon("osd", ["ceph-osd", "-i", "0", "-f",
                             "--osd-crush-update-on-start=false",
                             "--osd-class-update-on-start=false"])
        self._wait("OSD up", self.osd_up)

    def stop_daemon(self, name, sig=signal.SIGTERM):
        """Stop one daemon by its PID; SIGKILL after STOP_TIMEOUT."""
        p = self.procs.pop(name, None)
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop(self):
        """Stop every daemon (OSD first), remove the directory."""
        for name in ("osd", "mgr", "mon"):
            p = self.procs.get(name)
            if p is not None and p.poll() is None:
                # A stopped (SIGSTOP) daemon must run to see SIGTERM.
                p.send_signal(signal.SIGCONT)
            self.stop_daemon(name)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def main():
    cluster = CephCluster(cephx="--cephx" in sys.argv[1:])
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    t0 = time.monotonic()
    cluster.start()
    try:
        print("cluster up in %.1f s; PIDs %s" % (
            time.monotonic() - t0,
            {n: p.pid for n, p in cluster.procs.items()}))
        print("export CEPH_CONF=%s" % cluster.conf, flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
