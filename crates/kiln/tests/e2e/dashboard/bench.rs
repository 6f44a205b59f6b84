//! The dashboard's figures in BENCHMARKS.md, measured in the browser. A benchmark, not a
//! check (its figures depend on the machine), so it is ignored by the suite; run it with
//! `cargo test --release -p kiln --test e2e dashboard::bench -- --ignored --nocapture`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln_testkit::browser::Width;
use serde_json::json;

use super::*;
use crate::helpers::ADMIN_PASSWORD;

const CHANGES: usize = 200;

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by hand (BENCHMARKS.md)"]
async fn bench_state_change_to_dom_and_cold_load() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for n in 0..CHANGES {
        let body = json!({"type": "external", "payload": {"name": format!("b{n}")}});
        ids.push(app.submit_ok(&app.admin, body).await);
    }
    let browser = signed_in(&app, Width::Desktop, "admin", ADMIN_PASSWORD).await;

    // Cold load of the jobs page: an empty cache, then every byte the page fetched.
    let mut cold = Vec::new();
    let mut render = Vec::new();
    let mut paint = Vec::new();
    for _ in 0..5 {
        browser.cdp("Network.clearBrowserCache", json!({})).await;
        browser
            .execute(
                "document.getElementById('f-state').value = ''; return true",
                json!([]),
            )
            .await;
        browser.goto(&format!("http://{}/", app.addr())).await;
        browser
            .wait_for(
                "the painted rows",
                WAIT,
                "return performance.getEntriesByName('kiln-rows').length > 0",
            )
            .await;
        let m = browser
            .execute(
                "const nav = performance.getEntriesByType('navigation')[0];
                 const res = performance.getEntriesByType('resource');
                 const list = res.find(r => r.name.includes('/api/v1/jobs?'));
                 const rows = performance.getEntriesByName('kiln-rows')[0].startTime;
                 const fcp = performance.getEntriesByName('first-contentful-paint')[0];
                 return {bytes: nav.transferSize + res.reduce((a, r) => a + r.transferSize, 0),
                         rows: document.querySelectorAll('#jobs tbody tr').length,
                         render: rows - list.responseEnd,
                         fcp: fcp ? fcp.startTime : null};",
                json!([]),
            )
            .await;
        assert_eq!(m["rows"], 100, "{m}");
        cold.push(m["bytes"].as_f64().unwrap());
        render.push(m["render"].as_f64().unwrap());
        paint.push(m["fcp"].as_f64().unwrap_or(f64::NAN));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "cold load of the jobs page (100 rows): median {:.0} bytes transferred; rows in the DOM and laid out {:.1} ms after the list's response; first contentful paint {:.0} ms (medians of 5)",
        median(&mut cold),
        median(&mut render),
        median(&mut paint)
    );

    // State change → DOM: the test stamps each change just before it is sent; the page's
    // own MutationObserver stamps the row when its state attribute changes.
    browser
        .execute(
            "window.kilnSeen = {};
             new MutationObserver(ms => { for (const m of ms) {
                 const r = m.target; if (r.dataset && r.dataset.state === 'running') kilnSeen[r.dataset.id] = Date.now();
             } }).observe(document.querySelector('#jobs tbody'), {attributes: true, subtree: true, attributeFilter: ['data-state']});
             return true",
            json!([]),
        )
        .await;
    // Every job's row on the page: "show more" until all are there.
    let all = format!(
        "const more = document.getElementById('more'); if (!more.hidden) more.click();
         return document.querySelectorAll('#jobs tbody tr').length === {CHANGES}"
    );
    browser.wait_for("every row", WAIT, &all).await;
    let mut latencies = Vec::new();
    for id in &ids {
        let sent = now_ms();
        app.report(&app.admin, id, json!({"state": "running"}))
            .await;
        let seen = browser
            .wait_for(
                "the row",
                Duration::from_secs(10),
                &format!("return kilnSeen['{id}']"),
            )
            .await;
        latencies.push(seen.as_f64().unwrap() - sent);
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "state change → DOM over {CHANGES} jobs: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.95),
        latencies[latencies.len() - 1]
    );
    browser.close().await;
    app.stop().await;
}
