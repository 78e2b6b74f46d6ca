#!/usr/bin/env python3
# CPU time per frame of BenchmarkEngineFanout100 for several builds, run
# interleaved; CPU time (getrusage of the child) is less disturbed than wall
# clock on a shared machine. Build the test binaries first, e.g.:
#   for c in 8d98b20 fdb498c; do mkdir -p /tmp/mlesd-$c && git archive $c | tar -x -C /tmp/mlesd-$c \
#     && (cd /tmp/mlesd-$c && go test -c -o /tmp/engine-$c.test ./engine); done
#   go test -c -o /tmp/engine-head.test ./engine
# then: python3 deploy/bench/cpu_per_frame.py 200000x 12   (from the repository root)
import os, resource, statistics, subprocess, sys

N = sys.argv[1] if len(sys.argv) > 1 else "200000x"
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 12
path = "EngineFanout100$/loops=2/history=0$"
cases = [
    ("8d98b20 before Adopt", "/tmp/engine-8d98b20.test", path),
    ("fdb498c before TLS+metrics", "/tmp/engine-fdb498c.test", path),
    ("HEAD", "/tmp/engine-head.test", path),
    ("HEAD Stats every 1ms", "/tmp/engine-head.test", "EngineFanout100Scraped/loops=2/history=0/stats-every=1ms"),
    ("HEAD Stats every 100ms", "/tmp/engine-head.test", "EngineFanout100Scraped/loops=2/history=0/stats-every=100ms"),
]
res = {c[0]: [] for c in cases}
for _ in range(rounds):
    for name, binary, pat in cases:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run([binary, "-test.run", "^$", "-test.bench", pat, "-test.benchtime", N],
                             cwd="engine", capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if "PASS" not in out.stdout:
            sys.exit(f"{name} failed:\n{out.stdout}{out.stderr}")
        res[name].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
frames = int(N.rstrip("x"))
for name, _, _ in cases:
    v = res[name]
    print(f"{name:28s} CPU per frame: median {statistics.median(v) / frames * 1e9:6.0f} ns"
          f"  min {min(v) / frames * 1e9:6.0f} ns  (n={len(v)})")
