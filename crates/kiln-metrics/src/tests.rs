use super::*;

#[test]
fn labels_stay_bounded_whatever_is_recorded() {
    let m = Metrics::new("test");
    for i in 0..(MAX_NAMES + 50) {
        m.job_submitted(&format!("type-{i}"));
    }
    let text = m.encode(|_| {});
    assert_eq!(
        text.matches("kiln_jobs_submitted_total{").count(),
        MAX_NAMES + 1,
        "{MAX_NAMES} names and `other`"
    );
    assert!(text.contains("kiln_jobs_submitted_total{type=\"other\"} 50\n"));
    assert_eq!(m.name("type-0"), m.name("type-0"));
}

#[test]
fn text_has_the_families_with_base_units_and_totals() {
    let m = Metrics::new("1.2.3");
    m.job_submitted("echo");
    m.job_started("echo", Duration::from_millis(3));
    m.job_ended("echo", Outcome::Succeeded, Duration::from_millis(40));
    m.http_request("GET", "/api/v1/jobs/{id}", 200, Duration::from_micros(300));
    m.http_request("BREW", "/api/v1/jobs/{id}", 418, Duration::from_micros(300));
    m.store_commit(3, Duration::from_micros(120));
    let text = m.encode(|s| {
        s.queue_depth("default", "queued", 7);
        s.metrics().set_pool(3, 1, 0);
    });
    for line in [
        "kiln_build_info{version=\"1.2.3\"} 1\n",
        "kiln_jobs_submitted_total{type=\"echo\"} 1\n",
        "kiln_jobs_completed_total{type=\"echo\",outcome=\"succeeded\"} 1\n",
        "kiln_job_queue_wait_seconds_bucket{type=\"echo\",le=\"0.005\"} 1\n",
        "kiln_job_run_duration_seconds_count{type=\"echo\"} 1\n",
        "kiln_http_requests_total{method=\"GET\",route=\"/api/v1/jobs/{id}\",status=\"2xx\"} 1\n",
        "kiln_http_requests_total{method=\"other\",route=\"/api/v1/jobs/{id}\",status=\"4xx\"} 1\n",
        "kiln_store_commit_batch_size_bucket{le=\"4\"} 1\n",
        "kiln_jobs{queue=\"default\",state=\"queued\"} 7\n",
        "kiln_store_pool_connections{state=\"idle\"} 3\n",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
    // Gauges read from the database are set afresh on every scrape.
    let again = m.encode(|_| {});
    assert!(!again.contains("kiln_jobs{queue="), "{again}");
    // Known types and queues have their series before anything happens.
    m.known(["csv_aggregate"], ["default"]);
    let known = m.encode(|_| {});
    for line in [
        "kiln_jobs_completed_total{type=\"csv_aggregate\",outcome=\"dead\"} 0\n",
        "kiln_job_run_duration_seconds_count{type=\"csv_aggregate\"} 0\n",
        "kiln_jobs{queue=\"default\",state=\"running\"} 0\n",
    ] {
        assert!(known.contains(line), "{line:?} missing from:\n{known}");
    }
}

#[test]
fn starts_and_ends_go_into_the_series_of_the_current_minute() {
    let m = Metrics::new("test");
    m.job_started("echo", Duration::from_millis(3));
    m.job_started("echo", Duration::from_millis(4));
    m.job_ended("echo", Outcome::Succeeded, Duration::from_millis(40));
    m.job_ended("echo", Outcome::Retried, Duration::from_millis(40));
    let series = m.series();
    assert_eq!(series.len(), series::MINUTES);
    assert!(series.windows(2).all(|w| w[1].minute == w[0].minute + 1));
    // The minute may have turned between the records and the read: the last two.
    let last = &series[series::MINUTES - 2..];
    let sum = |f: fn(&series::Minute) -> u64| last.iter().map(f).sum::<u64>();
    assert_eq!(sum(|m| m.started), 2);
    assert_eq!(sum(|m| m.succeeded), 1);
    assert_eq!(sum(|m| m.failed), 1);
    assert_eq!(sum(|m| m.dead + m.cancelled), 0);
    assert!(last.iter().any(|m| m.start_latency.is_some()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60;
    let newest = series[series::MINUTES - 1].minute;
    assert!(newest.abs_diff(now as i64) <= 1, "{newest} vs {now}");
}
