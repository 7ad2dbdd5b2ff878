#!/usr/bin/python3
"""Drives spool-proto: every shape and size N times (interleaved, order
rotating between repetitions), the 1,000,000-message recovery test and the
kill -9 test; prints raw lines and markdown tables of medians [min..max].

    ./run.py bench   [--reps 3] [--shapes a,b] [--sizes small,large]
    ./run.py recover [--reps 3] [--shapes a,b] [--messages 1000000]
    ./run.py crash   [--reps 3] [--shapes a,b]
    ./run.py table FILE...      # tables again from saved raw lines

Every run is bounded (--timeout, passed on to spool-proto); store
directories live under --base (default /var/tmp/spool-proto: the real disk,
not tmpfs) and are removed after each run.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = {"small": (2048, 20000), "large": (102400, 2000)}
BENCH_SHAPES = ["files", "log-grow", "log-falloc", "log-recycle", "lmdb", "rocks-group",
                "rocks-group-wide", "rocks-group-recycle", "rocks-batch", "rocks-group-blob-wide",
                "rocks-batch-blob"]
BLOB_ONLY_LARGE = True  # blob variants differ from the plain ones only above 16 KiB
RECOVER_SHAPES = ["files", "log-recycle", "lmdb", "rocks-group"]
CRASH_SHAPES = ["files", "log-grow", "log-recycle", "lmdb", "rocks-group", "rocks-batch"]
BENCH_COLS = ["msgs_per_s", "cpu_ms_per_msg", "flushes_per_msg", "kb_written_per_msg",
              "discards_per_msg", "avg_batch", "lat_p50_ms", "lat_p99_ms", "drain_s"]


def log(msg):
    print("# " + msg, file=sys.stderr, flush=True)


def parse(line):
    kv = {}
    for tok in line.split()[1:]:
        if "=" in tok:
            k, v = tok.split("=", 1)
            kv[k] = v
    return kv


def disk_sample(name):
    with open("/proc/diskstats") as f:
        for line in f:
            fl = line.split()
            if fl[2] == name and len(fl) >= 20:
                return int(fl[18]), int(fl[9])
    return 0, 0


def disk_name(path):
    st = os.stat(path)
    with open("/proc/diskstats") as f:
        for line in f:
            fl = line.split()
            if int(fl[0]) == os.major(st.st_dev) and int(fl[1]) == os.minor(st.st_dev):
                return fl[2]
    return None


def noise(base, seconds, out):
    """Device activity while we do nothing: what other users of the disk add."""
    if seconds <= 0:
        return
    name = disk_name(base)
    f0, s0 = disk_sample(name)
    time.sleep(seconds)
    f1, s1 = disk_sample(name)
    line = "NOISE disk=%s seconds=%d flushes_per_s=%.2f kb_written_per_s=%.1f" % (
        name, seconds, (f1 - f0) / seconds, (s1 - s0) / 2 / seconds)
    emit(line, out)


def emit(line, out):
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def run(binary, args, timeout):
    cmd = [binary] + args + ["--timeout", str(timeout)]
    log(" ".join(cmd))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60)
    if p.returncode != 0:
        log("FAILED rc=%d: %s" % (p.returncode, p.stderr.strip()[-500:]))
        return []
    return [l for l in p.stdout.splitlines() if l.split(" ", 1)[0] in
            ("RESULT", "RECOVER", "CRASH")]


def fresh(d):
    shutil.rmtree(d, ignore_errors=True)


def cmd_bench(a):
    for rep in range(a.reps):
        noise(a.base, a.noise, a.out)
        for size in a.sizes:
            nbytes, count = SIZES[size]
            count = a.count or count
            shapes = [s for s in a.shapes if size == "large" or "blob" not in s or
                      not BLOB_ONLY_LARGE]
            k = rep % len(shapes)
            for shape in shapes[k:] + shapes[:k]:
                d = os.path.join(a.base, "run")
                fresh(d)
                for line in run(a.bin, ["run", "--shape", shape, "--dir", d, "--size",
                                        str(nbytes), "--count", str(count)] + a.extra,
                                a.timeout):
                    emit(line + " rep=%d" % rep, a.out)
                fresh(d)


def cmd_recover(a):
    for shape in a.shapes:
        d = os.path.join(a.base, "recover")
        fresh(d)
        t0 = time.time()
        filled = run(a.bin, ["run", "--shape", shape, "--dir", d, "--nosync", "--warmup", "0",
                            "--done-delay-ms", "-1", "--count", str(a.messages)], a.timeout)
        log("%s: %d messages stored in %.0f s (%s)" % (shape, a.messages, time.time() - t0,
                                                       "ok" if filled else "FAILED"))
        du = subprocess.run(["du", "-sk", d], capture_output=True, text=True).stdout.split()
        emit("STORED shape=%s messages=%d disk_mb=%.0f fill_s=%.0f" % (
            shape, a.messages, int(du[0]) / 1024 if du else -1, time.time() - t0), a.out)
        for rep in range(a.reps):
            for env in ([], ["--with-env"]):
                for line in run(a.bin, ["recover", "--shape", shape, "--dir", d, "--drop-caches"]
                                + env, a.timeout):
                    emit(line + " rep=%d" % rep, a.out)
        for line in run(a.bin, ["recover", "--shape", shape, "--dir", d], a.timeout):
            emit(line + " rep=warm", a.out)
        fresh(d)


def cmd_crash(a):
    kills = [700, 1500, 2300]
    for rep in range(a.reps):
        for shape in a.shapes:
            for extra in ([], ["--garbage", "6000"]):
                if extra and not (shape.startswith("log") or shape.startswith("rocks")):
                    continue
                d = os.path.join(a.base, "crash")
                fresh(d)
                for line in run(a.bin, ["crash", "--shape", shape, "--dir", d, "--count",
                                        "1000000", "--kill-after-ms", str(kills[rep % 3])]
                                + extra + a.extra, a.timeout):
                    emit(line + " rep=%d" % rep, a.out)
                fresh(d)


def med(vals):
    vals = sorted(vals)
    m = statistics.median(vals)

    def f(x):
        return ("%.0f" % x if abs(x) >= 100 else "%.1f" % x if abs(x) >= 10 else
                "%.2f" % x if abs(x) >= 1 else "%.3f" % x)
    return "%s [%s..%s]" % (f(m), f(vals[0]), f(vals[-1])) if len(vals) > 1 else f(m)


def table(lines):
    res = [parse(l) for l in lines if l.startswith("RESULT")]
    if res:
        print("\n| shape | size | producers | runs | " + " | ".join(BENCH_COLS) + " |")
        print("|---|---|---|---|" + "---|" * len(BENCH_COLS))
        keys = []
        for r in res:
            k = (r["size"], r["shape"], r["producers"])
            if k not in keys:
                keys.append(k)
        keys.sort(key=lambda k: (int(k[0]), BENCH_SHAPES.index(k[1]) if k[1] in BENCH_SHAPES
                                 else 99, int(k[2])))
        for k in keys:
            rs = [r for r in res if (r["size"], r["shape"], r["producers"]) == k]
            cells = [med([float(r[c]) for r in rs if c in r]) if any(c in r for r in rs)
                     else "-" for c in BENCH_COLS]
            print("| %s | %s | %s | %d | %s |" % (k[1], "2 KiB" if k[0] == "2048" else
                                                  "%d KiB" % (int(k[0]) // 1024), k[2], len(rs),
                                                  " | ".join(cells)))
    rec = [parse(l) for l in lines if l.startswith("RECOVER")]
    if rec:
        print("\n| shape | cold | with_env | runs | live | recover_s | cpu_s | mb_read | "
              "peak_rss_mb |")
        print("|---|---|---|---|---|---|---|---|---|")
        keys = []
        for r in rec:
            k = (r["shape"], r["cold"], r["with_env"])
            if k not in keys:
                keys.append(k)
        for k in keys:
            rs = [r for r in rec if (r["shape"], r["cold"], r["with_env"]) == k]
            print("| %s | %s | %s | %d | %s | %s | %s | %s | %s |" % (
                k[0], k[1], k[2], len(rs), rs[0]["live"],
                med([float(r["recover_s"]) for r in rs]), med([float(r["cpu_s"]) for r in rs]),
                med([float(r["mb_read"]) for r in rs]),
                med([float(r["peak_rss_mb"]) for r in rs]) if "peak_rss_mb" in rs[0] else "-"))
    cr = [parse(l) for l in lines if l.startswith("CRASH")]
    if cr:
        cols = ["killed_after_ms", "garbage_bytes", "acked", "done", "live_after", "lost_acked",
                "unacked_present", "done_resurrected", "torn", "dropped", "note"]
        print("\n| shape | " + " | ".join(cols) + " |")
        print("|---|" + "---|" * len(cols))
        for r in cr:
            print("| %s | %s |" % (r["shape"], " | ".join(r.get(c, "") for c in cols)))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["bench", "recover", "crash", "table"])
    ap.add_argument("files", nargs="*")
    ap.add_argument("--bin", default=os.path.join(HERE, "spool-proto"))
    ap.add_argument("--base", default="/var/tmp/spool-proto")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--shapes")
    ap.add_argument("--sizes", default="small,large")
    ap.add_argument("--count", type=int, help="messages per run instead of 20000/2000")
    ap.add_argument("--messages", type=int, default=1000000)
    ap.add_argument("--noise", type=int, default=10, help="seconds of idle sampling per rep")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--out", help="append raw lines to this file")
    ap.add_argument("--extra", default="", help="more spool-proto options, space separated")
    a = ap.parse_args()
    a.extra = a.extra.split()
    a.sizes = a.sizes.split(",")
    if a.what == "table":
        lines = []
        for fn in a.files:
            with open(fn) as f:
                lines += f.read().splitlines()
        table(lines)
        return
    default = {"bench": BENCH_SHAPES, "recover": RECOVER_SHAPES, "crash": CRASH_SHAPES}
    a.shapes = a.shapes.split(",") if a.shapes else default[a.what]
    os.makedirs(a.base, exist_ok=True)
    {"bench": cmd_bench, "recover": cmd_recover, "crash": cmd_crash}[a.what](a)


if __name__ == "__main__":
    main()
