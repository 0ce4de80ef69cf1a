"""Release steps run ON the board by `deploy`, `status` and `stop` (DESIGN §7): one JSON request in, one JSON
line out, so the host never builds a shell command from data and the token never appears on a command line.

    echo '{"action": "state", "root": "~/.edvit/boards/pi-1"}' | python -m edvit_tool.runtime.agent

Python >= 3.9, stdlib only (it runs from the runtime tree shipped to the board's sha256 cache, beside the worker).
Layout under a board's root: releases/<id>/ (complete once renamed into place), current -> releases/<id>,
worker.pid, deploy.lock. Actions:

    state     current release, live workers, releases present
    verify    sha256 of cached files (and of this runtime tree); mismatches are removed so they are sent again
    lock      hold an exclusive flock on <root>/deploy.lock until stdin closes (the host's channel ends)
    assemble  build releases/<id>/ from cached files (hard links) and small texts; rename into place
    stop      SIGTERM the root's workers, SIGKILL after a grace period
    switch    point `current` at a release (atomic rename of a symlink)
    start     start the current release's worker detached, write worker.pid
    tail      the end of a release's worker.log
    prune     remove old releases (never the current one nor the protected ones)
"""

import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time


WORKER = b"edvit_tool.runtime.worker"


class Fail(Exception):
    pass


def root_of(req):
    return os.path.abspath(os.path.expanduser(req["root"]))


def rel_dir(root, rel):
    if not rel or "/" in rel or rel.startswith("."):
        raise Fail("bad release id %r" % (rel,))
    return os.path.join(root, "releases", rel)


def current(root):
    try:
        return os.path.basename(os.readlink(os.path.join(root, "current")).rstrip("/"))
    except OSError:
        return None


def alive(pid):
    if not pid:
        return False
    if os.path.isdir("/proc"):
        try:
            with open("/proc/%d/stat" % pid) as f:
                return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")   # a zombie has exited
        except (OSError, IndexError):
            return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return None


def pidfile(root):
    return os.path.join(root, "worker.pid")


def read_pid(root):
    try:
        with open(pidfile(root)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def workers(root):
    """Live workers of this root: the pidfile's (if it is a worker) and any whose argv names our pidfile."""
    found = set()
    pid = read_pid(root)
    if alive(pid):
        cl = cmdline(pid)
        if cl is None or any(WORKER in a for a in cl):   # no /proc on this board: trust the pidfile
            found.add(pid)
    if os.path.isdir("/proc"):
        me, mine = os.getuid(), pidfile(root).encode()
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                if os.stat("/proc/" + d).st_uid != me:
                    continue
            except OSError:
                continue
            cl = cmdline(int(d))
            if cl and mine in cl and any(WORKER in a for a in cl) and alive(int(d)):
                found.add(int(d))
    return sorted(found)


def release_info(root, rel):
    try:
        with open(os.path.join(rel_dir(root, rel), "release.json")) as f:
            return json.load(f)
    except (OSError, ValueError, Fail):
        return None


def releases(root):
    try:
        return sorted(n for n in os.listdir(os.path.join(root, "releases")) if not n.startswith("."))
    except OSError:
        return []


def state(req):
    root = root_of(req)
    pid = read_pid(root)
    cur = current(root)
    return {"current": cur, "pidfile_pid": pid, "workers": workers(root), "releases": releases(root),
            "pid_alive": alive(req["pid"]) if req.get("pid") else None,
            "current_info": release_info(root, cur) if cur else None}


def safe_join(base, rel):
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise Fail("bad relative path %r" % (rel,))
    return os.path.join(base, *parts)


def assemble(req):
    root = root_of(req)
    final = rel_dir(root, req["release"])
    if os.path.exists(final):
        raise Fail("release %s already exists at %s" % (req["release"], final))
    tmp = os.path.join(root, "releases", ".tmp-%s-%d" % (req["release"], os.getpid()))
    os.makedirs(tmp, mode=0o755)
    linked = copied = 0
    try:
        for src, dst in req.get("links", []):
            path = safe_join(tmp, dst)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if not req.get("copy"):
                try:
                    os.link(src, path)   # the cache is immutable: share its blocks
                    linked += 1
                    continue
                except OSError:
                    pass
            shutil.copyfile(src, path)
            copied += 1
        for dst, text in req.get("files", {}).items():
            path = safe_join(tmp, dst)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        for dst, text in req.get("secrets", {}).items():
            fd = os.open(safe_join(tmp, dst), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        os.rename(tmp, final)   # a release dir that exists is complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"dir": final, "linked": linked, "copied": copied}


def stop(req):
    root = root_of(req)
    grace = float(req.get("grace", 10))
    pids = workers(root)
    signals = {}
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
            signals[str(p)] = "TERM"
        except ProcessLookupError:
            pass
    end = time.time() + grace
    while time.time() < end and any(alive(p) for p in pids):
        time.sleep(0.05)
    for p in pids:
        if alive(p):
            try:
                os.kill(p, signal.SIGKILL)
                signals[str(p)] = "KILL"
            except ProcessLookupError:
                pass
    end = time.time() + 10
    while any(alive(p) for p in pids):
        if time.time() > end:
            raise Fail("worker(s) %s still alive after SIGKILL" % [p for p in pids if alive(p)])
        time.sleep(0.05)
    if read_pid(root) is not None and not alive(read_pid(root)):
        os.remove(pidfile(root))   # a killed worker cannot remove its own
    return {"stopped": pids, "signals": signals}


def switch(req):
    root = root_of(req)
    rel = req.get("release")
    link = os.path.join(root, "current")
    prev = current(root)
    if rel is None:
        if os.path.lexists(link):
            os.remove(link)
        return {"previous": prev, "current": None}
    if not os.path.isfile(os.path.join(rel_dir(root, rel), "release.json")):
        raise Fail("release %s is not on this board (%s/release.json missing)" % (rel, rel_dir(root, rel)))
    tmp = os.path.join(root, ".current.tmp-%d" % os.getpid())
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(os.path.join("releases", rel), tmp)
    os.replace(tmp, link)   # rename(2) over the old link: atomic, like `ln -sfn` + `mv -T`
    return {"previous": prev, "current": rel}


def start(req):
    root = root_of(req)
    rel = current(root)
    if rel is None:
        raise Fail("no current release under %s" % root)
    info = release_info(root, rel)
    if info is None:
        raise Fail("%s/release.json is missing or unreadable" % rel_dir(root, rel))
    running = workers(root)
    if running:
        raise Fail("a worker is already running (pid %s); stop it first" % running)
    d = rel_dir(root, rel)
    argv = [sys.executable, "-m", "edvit_tool.runtime.worker"] + info["worker_args"] + ["--pidfile", pidfile(root)]
    env = dict(os.environ, PYTHONPATH=os.path.join(d, "runtime"), PYTHONUNBUFFERED="1")
    logf = open(os.path.join(d, "worker.log"), "ab")
    try:
        # detached: own session, stdin from /dev/null, output to the log, no fd of ours (nor of the SSH
        # channel) inherited, so this script and its channel end at once (the `nohup cmd >log 2>&1 </dev/null &`)
        p = subprocess.Popen(argv, cwd=d, env=env, stdin=subprocess.DEVNULL, stdout=logf,
                             stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    finally:
        logf.close()
    tmp = pidfile(root) + ".tmp-%d" % os.getpid()
    with open(tmp, "w") as f:
        f.write("%d\n" % p.pid)
    os.replace(tmp, pidfile(root))
    return {"pid": p.pid, "release": rel, "log": os.path.join(d, "worker.log")}


def tail(req):
    root = root_of(req)
    path = os.path.join(rel_dir(root, req["release"]), "worker.log")
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - int(req.get("bytes", 4000))))
            return {"log": f.read().decode("utf-8", "replace"), "path": path}
    except OSError as e:
        return {"log": "", "path": path, "missing": str(e)}


def prune(req):
    root = root_of(req)
    keep = set(req.get("protect", [])) | {current(root)}
    old = [r for r in releases(root) if r not in keep]
    removed = old[:max(0, len(old) - int(req.get("keep", 5)))]
    for r in removed:
        shutil.rmtree(rel_dir(root, r), ignore_errors=True)
    return {"removed": removed}


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(req):
    """files {path: sha256}: a file whose bytes do not hash to its name's sha256 is removed (the host sends it
    again). trees {dir: {relpath: sha256}}: a cached tree with any bad or missing file is removed whole."""
    bad, missing, dropped_trees = [], [], []
    for path, sha in sorted((req.get("files") or {}).items()):
        path = os.path.expanduser(path)
        if not os.path.isfile(path):
            missing.append(path)
        elif sha256_file(path) != sha:
            bad.append(path)
            os.remove(path)
    for tree, table in sorted((req.get("trees") or {}).items()):
        tree = os.path.expanduser(tree)
        for rel, sha in sorted(table.items()):
            path = safe_join(tree, rel)
            if not os.path.isfile(path) or sha256_file(path) != sha:
                dropped_trees.append(tree)
                shutil.rmtree(tree, ignore_errors=True)
                break
    return {"bad": bad, "missing": missing, "dropped_trees": dropped_trees}


def lock(req):
    """Take <root>/deploy.lock (waiting up to req["wait"] seconds); the caller keeps it until stdin closes."""
    root = root_of(req)
    os.makedirs(root, mode=0o755, exist_ok=True)
    path = os.path.join(root, "deploy.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.time() + float(req.get("wait", 0))
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise
            if time.time() >= deadline:
                try:
                    holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
                except ValueError:
                    holder = {}
                os.close(fd)
                raise Fail("another deploy holds %s (%s, since %s) and did not finish within %gs" % (
                    path, holder.get("by", "unknown"), holder.get("since", "?"), float(req.get("wait", 0))))
            time.sleep(0.1)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "by": req.get("by"),
                              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode(), 0)
    return {"lock": path, "fd": fd}


ACTIONS = {"state": state, "verify": verify, "lock": lock, "assemble": assemble, "stop": stop, "switch": switch,
           "start": start, "tail": tail, "prune": prune}


def handle(req):
    """One request -> one result dict (never raises for board trouble: {"ok": False, "error": ...})."""
    try:
        res = ACTIONS[req["action"]](req)
        res["ok"] = True
    except Fail as e:
        res = {"ok": False, "error": str(e)}
    except (OSError, ValueError, KeyError, TypeError, subprocess.SubprocessError) as e:
        res = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
    return res


def main():
    line = sys.stdin.readline()   # one JSON line; `lock` then holds until the rest of stdin ends
    try:
        req = json.loads(line)
    except ValueError as e:
        req, res = None, {"ok": False, "error": "bad request: %s" % e}
    else:
        res = handle(req) if isinstance(req, dict) else {"ok": False, "error": "request must be a JSON object"}
    fd = res.pop("fd", None)
    sys.stdout.write(json.dumps(res) + "\n")
    sys.stdout.flush()
    if fd is not None:
        sys.stdin.read()          # EOF: the host released the lock, or its connection is gone
        os.close(fd)


if __name__ == "__main__":
    main()
