#!/usr/bin/env python3
"""Watches tokend's memory brake reach two real nix builds.

usage: brake-watch.py TOKENCTL SOCKET OLD YOUNG PID...

Samples `tokenctl status --json` every 100 ms while any PID lives. Each time
the lease named YOUNG is shown frozen it checks the kernel's side: with a
cgroup, that cgroup's cgroup.events says "frozen 1"; without one, every
process whose root is the build's sandbox is stopped (state T). The
processes of the lease named OLD must never be stopped, nor its lease
frozen. Prints one line; exits 0 if the young build was seen frozen in
full, then thawed, and the old one never touched.
"""
import json
import os
import subprocess
import sys
import time

tokenctl, socket, old_name, young_name = sys.argv[1:5]
pids = [int(p) for p in sys.argv[5:]]


def status():
    try:
        out = subprocess.run([tokenctl, "--socket", socket, "status", "--json"],
                             capture_output=True, timeout=5, check=True).stdout
        return json.loads(out)
    except (subprocess.SubprocessError, ValueError):
        return None


def sandbox_procs(root):
    """States of the processes confined to the sandbox directory root.

    A sandboxed process reads its own root as "/" in its mount namespace,
    so it is known by the identity of the directory /proc/PID/root leads to.
    """
    try:
        want = os.stat(root)
    except OSError:
        return []
    states = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            got = os.stat("/proc/%s/root" % pid)
            if (got.st_dev, got.st_ino) != (want.st_dev, want.st_ino):
                continue
            with open("/proc/%s/stat" % pid) as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        except OSError:
            continue
    return states


def cgroup_frozen(cg):
    try:
        with open(os.path.join(cg, "cgroup.events")) as f:
            return "frozen 1" in f.read().splitlines()
    except OSError:
        return False


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


frozen_samples = full = thaws = 0
seen_states = ""
was_frozen = False
young_cgroup = ""
old_touched = []
while any(alive(p) for p in pids):
    st = status()
    for lease in (st or {}).get("leases", []):
        frozen = (lease.get("memory") or {}).get("frozen", False)
        root = lease.get("owner", {}).get("dir", "")
        if lease["name"] == old_name:
            stopped = sandbox_procs(root).count("T") if root else 0
            if frozen or stopped:
                old_touched.append("frozen" if frozen else "%d processes stopped" % stopped)
        elif lease["name"] == young_name:
            young_cgroup = lease.get("cgroup", "")
            if frozen:
                frozen_samples += 1
                if young_cgroup:
                    full += cgroup_frozen(young_cgroup)
                else:
                    states = sandbox_procs(root) if root else []
                    full += bool(states) and states.count("T") == len(states)
                    seen_states = " ".join(sorted(states))
            elif was_frozen:
                thaws += 1
            was_frozen = frozen
    time.sleep(0.1)

how = "its cgroup %s frozen" % young_cgroup if young_cgroup else "every process of its sandbox stopped"
if frozen_samples and not full and not young_cgroup:
    how += " (states of its processes when last seen frozen: %s)" % (seen_states or "none found")
print("young build frozen in %d samples, %s in %d of them, thawed %d times; old build %s"
      % (frozen_samples, how, full, thaws, "touched: " + ", ".join(old_touched[:3]) if old_touched else "never touched"))
sys.exit(0 if full > 0 and thaws > 0 and not old_touched else 1)
