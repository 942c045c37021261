#!/usr/bin/env python3
"""Watches tokend's memory brake reach real nix builds, from the kernel's side.

usage:
  brake-watch.py watch TOKENCTL SOCKET OLD YOUNG PID...
      Samples `tokenctl status --json` every 100 ms while any PID lives.
      Each time the lease named YOUNG is shown frozen, checks that the
      kernel agrees in full (see held). The lease named OLD must never be
      frozen nor any of its processes stopped. Prints one line; exits 0 if
      the young build was seen held, then thawed, and the old one never
      touched.
  brake-watch.py frozen TOKENCTL SOCKET YOUNG SECONDS
      Waits until the lease named YOUNG is shown frozen and held in full;
      prints what holds it (its cgroup, or its sandbox directory).
  brake-watch.py resumed TARGET SECONDS
      Waits until TARGET (a cgroup, or a sandbox directory) runs again,
      looking every 10 ms; prints when it saw that, in ms since the epoch.

A build is held when its cgroup's cgroup.events reads "frozen 1", or,
without a cgroup, when every process confined to its sandbox is stopped
(state T).
"""
import json
import os
import subprocess
import sys
import time


def status(tokenctl, socket):
    try:
        out = subprocess.run([tokenctl, "--socket", socket, "status", "--json"],
                             capture_output=True, timeout=5, check=True).stdout
        return json.loads(out)
    except (subprocess.SubprocessError, ValueError):
        return None


def leases(tokenctl, socket):
    return (status(tokenctl, socket) or {}).get("leases", [])


def sandbox_states(root):
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


def target(lease):
    return lease.get("cgroup") or lease.get("owner", {}).get("dir", "")


def held(where):
    """Whether the build at where (a cgroup or a sandbox) is held in full,
    with the states seen for a sandbox."""
    if where.startswith("/sys/fs/cgroup/"):
        try:
            with open(os.path.join(where, "cgroup.events")) as f:
                return "frozen 1" in f.read().splitlines(), ""
        except OSError:
            return False, ""
    states = sandbox_states(where)
    return bool(states) and states.count("T") == len(states), " ".join(sorted(states)) or "none found"


def running(where):
    if where.startswith("/sys/fs/cgroup/"):
        return not held(where)[0]
    states = sandbox_states(where)
    return bool(states) and "T" not in states


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def watch(tokenctl, socket, old_name, young_name, *pids):
    frozen_samples = full = thaws = 0
    seen, where, was_frozen, old_touched = "", "", False, []
    while any(alive(int(p)) for p in pids):
        for lease in leases(tokenctl, socket):
            frozen = (lease.get("memory") or {}).get("frozen", False)
            if lease["name"] == old_name:
                stopped = sandbox_states(lease.get("owner", {}).get("dir", "")).count("T")
                if frozen or stopped:
                    old_touched.append("frozen" if frozen else "%d processes stopped" % stopped)
            elif lease["name"] == young_name:
                where = target(lease)
                if frozen:
                    frozen_samples += 1
                    ok, seen = held(where)
                    full += ok
                elif was_frozen:
                    thaws += 1
                was_frozen = frozen
        time.sleep(0.1)
    how = "its cgroup %s frozen" % where if where.startswith("/sys/fs/cgroup/") else "every process of its sandbox stopped"
    if frozen_samples and not full and seen:
        how += " (states of its processes when last seen frozen: %s)" % seen
    print("young build frozen in %d samples, %s in %d of them, thawed %d times; old build %s"
          % (frozen_samples, how, full, thaws, "touched: " + ", ".join(old_touched[:3]) if old_touched else "never touched"))
    return 0 if full > 0 and thaws > 0 and not old_touched else 1


def frozen(tokenctl, socket, young_name, seconds):
    end = time.monotonic() + float(seconds)
    while time.monotonic() < end:
        for lease in leases(tokenctl, socket):
            if lease["name"] == young_name and (lease.get("memory") or {}).get("frozen", False) and held(target(lease))[0]:
                print(target(lease))
                return 0
        time.sleep(0.1)
    print("the lease named %s was not seen frozen in full within %s s" % (young_name, seconds))
    return 1


def resumed(where, seconds):
    start = time.monotonic()
    while time.monotonic() - start < float(seconds):
        if running(where):
            print(time.time_ns() // 1000000)
            return 0
        time.sleep(0.01)
    print("%s still held after %s s (%s)" % (where, seconds, held(where)[1] or "frozen"))
    return 1


if __name__ == "__main__":
    commands = {"watch": watch, "frozen": frozen, "resumed": resumed}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    sys.exit(commands[sys.argv[1]](*sys.argv[2:]))
