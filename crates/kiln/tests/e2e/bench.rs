//! `kiln bench` (the measuring instrument, ADR 0006): the real binary against a local child
//! server and against `--url`, with tiny counts; bad flags exit 2.

use std::process::{Command, Output};

use serde_json::Value;

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
    assert!(figure(&r, "server", "peak RSS (VmHWM)") > 1.0);
    for scenario in ["submit", "e2e", "latency", "cancel", "list"] {
        // CPU time has a 10 ms resolution: a tiny scenario may show 0.
        assert!(figure(&r, scenario, "server CPU") >= 0.0);
        assert!(figure(&r, scenario, "bench (client) CPU") >= 0.0);
    }
    assert_eq!(r["errors"], serde_json::json!([]));
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
