#!/usr/bin/env python3
"""Reference tools on the same machine as `cargo bench -p kiln-kernels --bench kernels`.

The compute-kernel targets are set against the best tools for each task; this script measures
those tools here, so BENCHMARKS.md can put both side by side from one machine:

- NumPy matmul (its wheel bundles OpenBLAS) at n = 1024 and 2048, on 2 threads and on 1;
- DuckDB and polars aggregating the 10^7-row CSV that our own generator writes (group_by on
  `value`: count, sum, mean, min, max per group, sorted by group), on 2 threads;
- the primesieve C library generating the first 10^7 and 5*10^7 primes as u32 into fresh
  memory (through ctypes; one thread, as its generate functions are).

Each figure is the median of --runs runs, min-max beside it. Every tool runs in a child
process whose environment fixes its thread count before the library loads. OPENBLAS_CORETYPE
is removed from that environment: a value such as `Haswell` holds OpenBLAS to AVX2 kernels
on a CPU that has AVX-512.

Setup (a throw-away virtualenv; nothing here is a dependency of Kiln):

    python3 -m venv /tmp/kiln-ref && /tmp/kiln-ref/bin/pip install numpy duckdb polars
    apt-get install libprimesieve-dev        # the C library; or skip: the primes rows say so

Run:

    # the CSV, written by our generator (10^7 rows, 10^4 groups, seed 1) and kept
    cargo bench -p kiln-kernels --bench kernels -- --runs 1 --csv /tmp/kiln-10m.csv "csv_aggregate generate"
    /tmp/kiln-ref/bin/python crates/kiln-kernels/benches/reference.py --csv /tmp/kiln-10m.csv

`--only matmul|csv|primes` runs one part; `--runs N` (default 5).
"""

import argparse
import ctypes
import ctypes.util
import json
import os
import statistics
import subprocess
import sys
import time


def summary(times_s):
    return statistics.median(times_s), min(times_s), max(times_s)


def child_matmul(n, runs):
    import numpy as np

    rng = np.random.default_rng(1)
    a = rng.uniform(-1.0, 1.0, (n, n))
    b = rng.uniform(-1.0, 1.0, (n, n))
    a @ b  # warm-up: thread start-up, page faults of the output
    times, cpu = [], []
    for _ in range(runs):
        start, cpu_start = time.perf_counter(), time.process_time()
        c = a @ b
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    del c
    return {"times": times, "cpu": cpu, "gflop": 2.0 * n**3 / 1e9, "version": np.__version__}


CSV_SCHEMA = ("id", "group", "value", "timestamp")


def child_duckdb(path, runs):
    import duckdb

    con = duckdb.connect(config={"threads": 2})
    query = f"""
        SELECT "group", count(*), sum(value), avg(value), min(value), max(value)
        FROM read_csv('{path}', header = true, columns = {{
            'id': 'BIGINT', 'group': 'VARCHAR', 'value': 'DOUBLE', 'timestamp': 'BIGINT'}})
        GROUP BY "group" ORDER BY "group"
    """
    times, groups = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        groups = len(con.execute(query).fetchall())
        times.append(time.perf_counter() - start)
    return {"times": times, "groups": groups, "version": duckdb.__version__}


def child_polars(path, runs):
    import polars as pl

    schema = {"id": pl.Int64, "group": pl.Utf8, "value": pl.Float64, "timestamp": pl.Int64}
    times, groups = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        out = (
            pl.scan_csv(path, schema=schema)
            .group_by("group")
            .agg(
                pl.len().alias("count"),
                pl.col("value").sum().alias("sum"),
                pl.col("value").mean().alias("mean"),
                pl.col("value").min().alias("min"),
                pl.col("value").max().alias("max"),
            )
            .sort("group")
            .collect()
        )
        times.append(time.perf_counter() - start)
        groups = out.height
    return {
        "times": times,
        "groups": groups,
        "version": pl.__version__,
        "threads": pl.thread_pool_size(),
    }


UINT32_PRIMES = 11  # from primesieve.h's enum


def child_primes(n, runs):
    name = ctypes.util.find_library("primesieve")
    if name is None:
        return {"missing": "libprimesieve not found (apt-get install libprimesieve-dev)"}
    lib = ctypes.CDLL(name)
    lib.primesieve_generate_n_primes.restype = ctypes.c_void_p
    lib.primesieve_generate_n_primes.argtypes = [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int]
    lib.primesieve_free.argtypes = [ctypes.c_void_p]
    lib.primesieve_version.restype = ctypes.c_char_p
    times, last = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        primes = lib.primesieve_generate_n_primes(n, 0, UINT32_PRIMES)
        times.append(time.perf_counter() - start)
        last = ctypes.cast(primes, ctypes.POINTER(ctypes.c_uint32))[n - 1]
        lib.primesieve_free(primes)
    return {"times": times, "nth": last, "version": lib.primesieve_version().decode()}


def run_child(args, threads):
    """Runs this script as a child with the thread count fixed in its environment."""
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "POLARS_MAX_THREADS"):
        env[var] = str(threads)
    out = subprocess.run(
        [sys.executable, __file__, "--child", *map(str, args)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def row(name, result, note):
    median, lo, hi = summary(result["times"])
    print(f"| {name} | {median * 1e3:.1f} | {lo * 1e3:.1f}–{hi * 1e3:.1f} | {note(median)} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", help="the CSV written by the kernel benchmark (--csv PATH)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=["matmul", "csv", "primes"])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, value, runs = args.child[0], args.child[1], int(args.child[2])
        handler = {
            "matmul": lambda: child_matmul(int(value), runs),
            "duckdb": lambda: child_duckdb(value, runs),
            "polars": lambda: child_polars(value, runs),
            "primes": lambda: child_primes(int(value), runs),
        }[kind]
        print(json.dumps(handler()))
        return

    print(f"reference tools, median of {args.runs} runs\n")
    print("| tool and task | median ms | min–max ms | figure |\n|---|---|---|---|")
    if args.only in (None, "matmul"):
        for n in (1024, 2048):
            for threads in (2, 1):
                r = run_child(["matmul", n, args.runs], threads)
                row(
                    f"NumPy {r['version']} (OpenBLAS) matmul n={n}, {threads} thread(s)",
                    r,
                    lambda s, r=r: f"{r['gflop'] / s:.1f} GFLOP/s; per busy core "
                    f"{r['gflop'] / statistics.median(r['cpu']):.1f} (per second of CPU time)",
                )
    if args.only in (None, "csv"):
        if args.csv is None or not os.path.exists(args.csv):
            print("| CSV aggregation | | | skipped: pass --csv PATH (see the header) |")
        else:
            with open(args.csv, "rb") as f:
                rows = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b"")) - 1
            size_mib = os.path.getsize(args.csv) / 2**20
            for tool in ("duckdb", "polars"):
                r = run_child([tool, args.csv, args.runs], 2)
                row(
                    f"{tool} {r['version']} group_by {rows} rows ({size_mib:.0f} MiB), 2 threads",
                    r,
                    lambda s, r=r: f"{rows / s / 1e6:.1f} M rows/s, {r['groups']} groups",
                )
    if args.only in (None, "primes"):
        for n in (10_000_000, 50_000_000):
            r = run_child(["primes", n, args.runs], 1)
            if "missing" in r:
                print(f"| primesieve first {n} primes | | | {r['missing']} |")
            else:
                row(
                    f"primesieve {r['version']} (C library) first {n} primes as u32",
                    r,
                    lambda s, r=r: f"nth = {r['nth']}",
                )


if __name__ == "__main__":
    main()
