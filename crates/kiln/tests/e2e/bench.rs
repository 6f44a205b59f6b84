//! `kiln bench` (the measuring instrument, ADR 0006): the real binary against a local child
//! server (on SQLite, and on PostgreSQL with `--database`) and against `--url`, with tiny
//! counts; bad flags exit 2.

use std::process::{Command, Output};

use serde_json::Value;

use kiln_store::Store;
use kiln_testkit::TempPostgres;

use crate::helpers::{ADMIN_PASSWORD, TestApp};

/// Tiny counts: every scenario runs, the whole run stays within a few seconds.
const TINY: &[&str] = &[
    "--jobs",
    "200",
    "--connections",
    "16",
    "--latency-jobs",
    "20",
    "--cancels",
    "5",
    "--list-requests",
    "50",
    "--read-seconds",
    "0.2",
    "--stream-lines",
    "5000",
    "--max-seconds",
    "30",
    "--json",
];

fn bench<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("bench")
        .args(args)
        .env_clear()
        .output()
        .expect("kiln runs")
}

fn report(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "kiln bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

/// The value of one figure; fails if it is missing.
fn figure(report: &Value, scenario: &str, name: &str) -> f64 {
    report["figures"]
        .as_array()
        .expect("a figures array")
        .iter()
        .find(|f| f["scenario"] == scenario && f["figure"] == name)
        .and_then(|f| f["value"].as_f64())
        .unwrap_or_else(|| panic!("no figure `{scenario} / {name}` in {report:#}"))
}

/// The endpoints `read` measures, in its order.
const READ_ENDPOINTS: [&str; 13] = [
    "GET /healthz",
    "GET /api/v1/me",
    "GET /api/v1/jobs/{id}, small job",
    "GET /api/v1/jobs/{id}, 11 KB result",
    "GET /api/v1/jobs/{id}/status, small job",
    "GET /api/v1/jobs/{id}/status, 11 KB result",
    "GET /api/v1/jobs/{id}/events",
    "GET /api/v1/jobs/{id}/logs",
    "GET /api/v1/jobs?limit=20",
    "GET /api/v1/jobs?limit=20&state=succeeded",
    "GET /api/v1/admin/jobs?limit=20",
    "GET /metrics, Prometheus text, one at a time",
    "GET /metrics, JSON summary, one at a time",
];

/// The `read` rows: one per endpoint, in order, each with answers, ordered percentiles, no
/// errors, and the server's CPU per request when `local`.
fn read_rows(report: &Value, local: bool) -> &Vec<Value> {
    let rows = report["endpoints"].as_array().expect("an endpoints array");
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(names, READ_ENDPOINTS, "{report:#}");
    for row in rows {
        assert_eq!(row["scenario"], "read");
        assert_eq!(row["errors"], 0, "{row}");
        assert!(row["requests"].as_u64().unwrap() > 0, "{row}");
        assert!(row["requests_per_s"].as_f64().unwrap() > 0.0, "{row}");
        let p = ["p50_ms", "p95_ms", "p99_ms"].map(|p| row[p].as_f64().unwrap());
        assert!(0.0 < p[0] && p[0] <= p[1] && p[1] <= p[2], "{row}");
        if row["endpoint"]
            .as_str()
            .unwrap()
            .starts_with("GET /metrics")
        {
            // Scrapes one at a time: a latency, not a rate under load.
            assert_eq!(row["requests"], 50, "{row}");
            assert!(row["server_cpu_us"].is_null() && row["percent_of_baseline"].is_null());
            continue;
        }
        assert_eq!(row["server_cpu_us"].is_number(), local, "{row}");
        assert!(row["percent_of_baseline"].as_f64().unwrap() > 0.0, "{row}");
    }
    assert_eq!(rows[0]["percent_of_baseline"], 100.0);
    rows
}

/// p50 ≤ p95 ≤ p99 of one measure, each present and not negative.
fn ordered(report: &Value, scenario: &str, name: &str) -> [f64; 3] {
    let p = ["p50", "p95", "p99"].map(|p| figure(report, scenario, &format!("{name} {p}")));
    assert!(
        0.0 <= p[0] && p[0] <= p[1] && p[1] <= p[2],
        "{scenario} / {name}: {p:?}"
    );
    p
}

#[test]
fn bench_runs_every_scenario_on_a_local_server_and_reports_every_figure() {
    let mut args = vec!["--seed-jobs", "1000"];
    args.extend_from_slice(TINY);
    let r = report(&bench(&args));

    assert!(r["cores"].as_u64().unwrap() >= 1);
    assert_eq!(r["durability"], "SQLite WAL, synchronous=NORMAL");
    assert_eq!(figure(&r, "seed", "jobs written (store, bulk)"), 1000.0);
    assert_eq!(figure(&r, "submit", "accepted (202)"), 200.0);
    assert!(figure(&r, "submit", "throughput") > 0.0);
    assert!(ordered(&r, "submit", "request latency")[0] > 0.0);
    assert_eq!(figure(&r, "e2e", "jobs succeeded"), 200.0);
    assert!(figure(&r, "e2e", "throughput") > 0.0);
    assert_eq!(figure(&r, "latency", "jobs"), 20.0);
    // Stored timestamps have millisecond precision: 0 ms is a valid start latency.
    ordered(&r, "latency", "start (started_at − created_at)");
    assert!(ordered(&r, "latency", "submit → succeeded (client)")[0] > 0.0);
    assert_eq!(figure(&r, "cancel", "cancels"), 5.0);
    assert!(ordered(&r, "cancel", "running → cancelled")[0] > 0.0);
    assert!(figure(&r, "list", "jobs in the table") >= 1000.0 + 2.0 * 200.0);
    assert!(ordered(&r, "list", "GET /jobs?limit=20")[0] > 0.0);
    assert!(ordered(&r, "list", "GET /jobs?limit=20&state=succeeded")[0] > 0.0);
    read_rows(&r, true);
    assert!(figure(&r, "server", "peak RSS (VmHWM)") > 1.0);
    for scenario in ["submit", "e2e", "latency", "cancel", "list", "read"] {
        // CPU time has a 10 ms resolution: a tiny scenario may show 0.
        assert!(figure(&r, scenario, "server CPU") >= 0.0);
        assert!(figure(&r, scenario, "bench (client) CPU") >= 0.0);
    }
    assert_eq!(r["errors"], serde_json::json!([]));
}

#[test]
fn bench_read_measures_every_read_endpoint_on_a_table_spread_over_users() {
    let r = report(&bench(&[
        "--scenario",
        "read",
        "--read-seconds",
        "1",
        "--seed-jobs",
        "2000",
        "--seed-users",
        "5",
        "--json",
    ]));

    assert_eq!(figure(&r, "seed", "jobs written (store, bulk)"), 2000.0);
    assert_eq!(figure(&r, "seed", "users owning them"), 5.0);
    // Counted before the scenario submits the two jobs it reads.
    assert_eq!(figure(&r, "read", "jobs in the table"), 2000.0);
    assert_eq!(figure(&r, "read", "connections"), 64.0);
    assert_eq!(figure(&r, "read", "measured time per endpoint"), 1.0);
    assert!(figure(&r, "read", "GET /api/v1/jobs/{id} body, 11 KB result") > 2.0 * 11_000.0);
    read_rows(&r, true);
    assert_eq!(r["errors"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_runs_its_local_server_on_an_empty_postgres_database_and_refuses_a_used_one() {
    let Some(db) = TempPostgres::create().await else {
        return;
    };
    let args = [
        "--database",
        db.url.as_str(),
        "--scenario",
        "read",
        "--read-seconds",
        "0.2",
        "--seed-jobs",
        "1000",
        "--seed-users",
        "3",
        "--connections",
        "8",
        "--json",
    ]
    .map(str::to_owned);
    let again = args.clone();
    let out = tokio::task::spawn_blocking(move || bench(&args))
        .await
        .unwrap();
    let r = report(&out);
    assert!(
        r["durability"].as_str().unwrap().starts_with("PostgreSQL "),
        "{r}"
    );
    assert_eq!(figure(&r, "seed", "jobs written (store, bulk)"), 1000.0);
    assert_eq!(figure(&r, "read", "jobs in the table"), 1000.0);
    read_rows(&r, true);

    // The database now holds jobs: a second run refuses it and writes nothing.
    let out = tokio::task::spawn_blocking(move || bench(&again))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("already holds jobs"), "{stderr}");
    let store = db.store().await;
    // The seed, and the bench's small, large and 20-job page of its own.
    assert_eq!(store.job_stats().await.unwrap().total_submitted, 1022);
    assert_eq!(store.user_count().await.unwrap(), 4);
}

/// `--nodes 3`: three `kiln serve` processes on one PostgreSQL database, every request
/// sent to the next; all the jobs run, and the registry lists the three nodes.
#[tokio::test(flavor = "multi_thread")]
async fn bench_spreads_its_load_over_several_nodes_on_one_postgres_database() {
    let Some(db) = TempPostgres::create().await else {
        return;
    };
    let args = [
        "--database",
        db.url.as_str(),
        "--nodes",
        "3",
        "--scenario",
        "submit,e2e",
        "--jobs",
        "300",
        "--connections",
        "6",
        "--json",
    ]
    .map(str::to_owned);
    let out = tokio::task::spawn_blocking(move || bench(&args))
        .await
        .unwrap();
    let r = report(&out);
    assert!(
        r["server"]
            .as_str()
            .unwrap()
            .starts_with("3 `kiln serve` child processes"),
        "{r}"
    );
    assert_eq!(figure(&r, "submit", "accepted (202)"), 300.0);
    assert_eq!(figure(&r, "e2e", "jobs succeeded"), 300.0);
    // Three nodes registered (and were killed by the bench at the end).
    let store = db.store().await;
    let nodes = store.node_list(chrono::Utc::now()).await.unwrap();
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["kiln-bench-1", "kiln-bench-2", "kiln-bench-3"]);
    assert_eq!(store.job_stats().await.unwrap().total_submitted, 600);
}

#[test]
fn bench_prints_a_markdown_table_by_default_with_full_durability() {
    let out = bench(&[
        "--scenario",
        "submit,list",
        "--jobs",
        "50",
        "--list-requests",
        "10",
        "--sqlite-sync",
        "full",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("synchronous=FULL"), "{text}");
    assert!(
        text.contains("| scenario | figure | value | unit |"),
        "{text}"
    );
    assert!(
        text.contains("| submit | accepted (202) | 50 | jobs |"),
        "{text}"
    );
    assert!(
        !text.contains("| e2e |"),
        "only the chosen scenarios run: {text}"
    );
}

#[test]
fn bench_serves_its_local_server_over_tls_with_tls() {
    let r = report(&bench(&[
        "--tls",
        "--scenario",
        "submit,e2e",
        "--jobs",
        "100",
        "--connections",
        "8",
        "--json",
    ]));
    assert!(r["server"].as_str().unwrap().contains("HTTPS"), "{r}");
    assert_eq!(figure(&r, "submit", "accepted (202)"), 100.0);
    assert_eq!(figure(&r, "e2e", "jobs succeeded"), 100.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_measures_a_running_server_given_by_url() {
    let app = TestApp::spawn().await;
    let url = format!("http://{}", app.addr());
    let args = [
        "--url",
        url.as_str(),
        "--password",
        ADMIN_PASSWORD,
        "--scenario",
        "submit,e2e,list",
        "--jobs",
        "100",
        "--seed-jobs",
        "50",
        "--list-requests",
        "10",
        "--json",
    ];
    let args = args.map(str::to_owned);
    let out = tokio::task::spawn_blocking(move || bench(&args))
        .await
        .unwrap();
    let r = report(&out);

    assert_eq!(figure(&r, "seed", "jobs written (HTTP)"), 50.0);
    assert_eq!(figure(&r, "e2e", "jobs succeeded"), 100.0);
    assert!(figure(&r, "list", "jobs in the table") >= 250.0);
    app.stop().await;
}

#[test]
fn bench_rejects_bad_flags_with_exit_2_and_says_why() {
    for (args, says) in [
        (&["--connections", "0"][..], "--connections must be between"),
        (
            &["--rate", "0", "--jobs", "0"][..],
            "--jobs must be at least 1",
        ),
        (&["--url", "http://127.0.0.1:1"][..], "--url needs --token"),
        (
            &["--url", "http://127.0.0.1:1", "--token", "t", "--tls"][..],
            "--tls apply to the local server only",
        ),
        (&["--scenario", "nope"][..], "invalid value 'nope'"),
        (
            &["--read-seconds", "0"][..],
            "--read-seconds must be between",
        ),
        (&["--seed-users", "0"][..], "--seed-users must be between"),
        (
            &["--database", "sqlite://kiln.db"][..],
            "--database takes a postgres:// URL",
        ),
        (
            &[
                "--url",
                "http://127.0.0.1:1",
                "--token",
                "t",
                "--seed-users",
                "2",
            ][..],
            "--nodes apply to the local server only",
        ),
        (&["--nodes", "0"][..], "--nodes must be between 1 and 16"),
        (
            &["--nodes", "3"][..],
            "--nodes above 1 needs a PostgreSQL --database",
        ),
    ] {
        let out = bench(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn bench_stops_a_scenario_at_max_seconds_prints_what_it_measured_and_exits_1() {
    let out = bench(&[
        "--scenario",
        "cancel",
        "--cancels",
        "100000",
        "--max-seconds",
        "1",
        "--json",
    ]);

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stopped at --max-seconds"), "{stderr}");
    let r: Value = serde_json::from_slice(&out.stdout).expect("the report is still printed");
    assert!(figure(&r, "cancel", "cancels") >= 1.0);
    assert_eq!(r["errors"].as_array().unwrap().len(), 1);
}
