use clap::Parser;

use super::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    config: Config,
}

fn parse(args: &[&str]) -> Config {
    let mut argv = vec!["kiln"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv).unwrap().config
}

/// The defaults the README's configuration table documents.
#[test]
fn defaults_match_the_spec() {
    let c = parse(&[]);
    assert_eq!(c.port, 8080);
    assert_eq!(c.max_concurrency, 4);
    assert_eq!(c.retention, Duration::from_secs(7 * 86_400));
    assert_eq!((c.submit_rate.as_str(), c.submit_burst), ("100/s", 1000));
    assert!(
        parse(&["--submit-rate", "off"])
            .submit_rate()
            .unwrap()
            .is_none()
    );
    assert!(parse(&["--submit-rate", "fast"]).validate().is_err());
    assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
    assert_eq!(c.upload_limit, 50 << 20);
}

#[test]
fn upload_limits_take_binary_units() {
    assert_eq!(parse(&["--upload-limit", "1234"]).upload_limit, 1234);
    assert_eq!(parse(&["--upload-limit", "512KiB"]).upload_limit, 512 << 10);
    assert_eq!(parse(&["--upload-limit", "2G"]).upload_limit, 2 << 30);
    for bad in ["ten", "5 parsecs", "99999999999999999999GiB"] {
        assert!(parse_size(bad).is_err(), "{bad}");
    }
}

#[test]
fn validation_lists_every_problem_at_once() {
    let c = parse(&[
        "--max-concurrency",
        "0",
        "--max-queued",
        "0",
        "--database",
        "mysql://x",
        "--log",
        "=[bad",
    ]);
    let problems = c.validate().unwrap_err();
    assert_eq!(problems.len(), 4, "{problems:#?}");
}

#[test]
fn durations_and_policies_have_upper_bounds() {
    let huge = "18446744073709551615s";
    let c = parse(&[
        "--lease",
        huge,
        "--retention",
        huge,
        "--shutdown-grace",
        "2h",
        "--session-ttl",
        "400d",
        "--upload-timeout",
        "2d",
        "--header-timeout",
        "0s",
    ]);
    let problems = c.validate().unwrap_err();
    assert_eq!(problems.len(), 6, "{problems:#?}");
    assert!(problems[0].starts_with("KILN_LEASE must be between 1s and 1day"));
    let ok = parse(&[
        "--lease",
        "1d",
        "--retention",
        "36500d",
        "--session-ttl",
        "365d",
    ]);
    assert!(ok.validate().is_ok());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.toml");
    std::fs::write(
        &path,
        "[types.sleep]\ntimeout_ms = 18446744073709551615\nmax_attempts = 4294967295\n\
         backoff_base_ms = 604800001\nbackoff_cap_ms = 604800000\n",
    )
    .unwrap();
    let problems = parse(&["--config", path.to_str().unwrap()])
        .validate()
        .unwrap_err();
    assert_eq!(problems.len(), 3, "{problems:#?}");
}

#[test]
fn the_toml_file_overrides_type_policies_and_sets_queue_caps() {
    let dir = std::env::temp_dir().join(format!("kiln-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kiln.toml");
    std::fs::write(
        &path,
        "[queues.slow]\nconcurrency = 1\n[types.sleep]\ntimeout_ms = 100\nmax_attempts = 2\n",
    )
    .unwrap();
    let v = parse(&["--config", path.to_str().unwrap()])
        .validate()
        .unwrap();
    assert_eq!(v.file.queues["slow"].concurrency, 1);
    let policy = v.catalogue.get(kiln_domain::JobType::Sleep).policy;
    assert_eq!((policy.timeout_ms, policy.max_attempts), (100, 2));
    std::fs::write(&path, "[types.nope]\n[queues.Bad]\nconcurrency = 0\n").unwrap();
    let problems = parse(&["--config", path.to_str().unwrap()])
        .validate()
        .unwrap_err();
    assert_eq!(problems.len(), 3, "{problems:#?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_cloud_object_store_needs_the_cloud_feature() {
    let problems = parse(&["--object-store", "s3://bucket/kiln"]).validate();
    if cfg!(feature = "cloud") {
        assert!(problems.is_ok());
    } else {
        let problems = problems.unwrap_err();
        assert!(problems[0].contains("--features cloud"), "{problems:?}");
    }
    assert!(parse(&["--object-store", "memory:///"]).validate().is_ok());
    assert!(
        parse(&["--object-store", "file:///srv/kiln"])
            .validate()
            .is_ok()
    );
}

#[test]
fn tls_files_come_in_pairs_and_must_load() {
    let problems = parse(&["--tls-cert", "/x/cert.pem"])
        .validate()
        .unwrap_err();
    assert!(problems[0].contains("both or neither"), "{problems:?}");
    let problems = parse(&["--tls-client-ca", "/x/ca.pem"])
        .validate()
        .unwrap_err();
    assert!(problems[0].contains("needs KILN_TLS_CERT"), "{problems:?}");
    let problems = parse(&[
        "--tls-cert",
        "/nonexistent/cert.pem",
        "--tls-key",
        "/nonexistent/key.pem",
        "--database",
        "postgres://u@db/kiln?sslmode=sometimes",
    ])
    .validate()
    .unwrap_err();
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems[0].contains("sslmode `sometimes`"), "{problems:?}");
    assert!(
        problems[1].contains("/nonexistent/cert.pem"),
        "{problems:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let one = crate::tls::dev::DevCerts::generate(&[]).unwrap();
    let paths = one.write(dir.path(), false).unwrap();
    let flags = |key: &std::path::Path| {
        let (cert, key) = (paths.server.to_str().unwrap(), key.to_str().unwrap());
        parse(&["--tls-cert", cert, "--tls-key", key]).validate()
    };
    assert!(flags(&paths.server_key).unwrap().tls.is_some());
    let problems = flags(&paths.client_key).unwrap_err();
    assert!(problems[0].contains("does not fit"), "{problems:?}");
}

#[test]
fn secrets_do_not_print() {
    assert_eq!(format!("{:?}", Secret("hunter22".into())), "Secret(***)");
}

#[test]
fn openid_connect_needs_an_https_issuer_and_an_audience() {
    assert!(parse(&[]).validate().unwrap().oidc.is_none());
    let ok = parse(&[
        "--oidc-issuer",
        "https://login.microsoftonline.com/tenant/v2.0",
        "--oidc-audience",
        "api://kiln",
        "--oidc-roles-claim",
        "roles",
    ])
    .validate()
    .unwrap()
    .oidc
    .unwrap();
    assert_eq!(ok.roles_claim.as_deref(), Some("roles"));
    assert_eq!(
        ok.client_id, None,
        "no dashboard sign-in without a client id"
    );
    let with_client = parse(&[
        "--oidc-issuer",
        "https://login.example/t",
        "--oidc-audience",
        "api://kiln",
        "--oidc-client-id",
        "c1",
        "--oidc-client-secret",
        "s3",
    ])
    .validate()
    .unwrap()
    .oidc
    .unwrap();
    assert_eq!(with_client.client_id.as_deref(), Some("c1"));
    assert_eq!(with_client.client_secret.as_deref(), Some("s3"));
    for bad in [
        &["--oidc-audience", "api://kiln"][..],
        &["--oidc-client-id", "c1"][..],
        &[
            "--oidc-issuer",
            "https://login.example/t",
            "--oidc-audience",
            "a",
            "--oidc-client-secret",
            "s",
        ][..],
        &["--oidc-issuer", "https://login.example/t"][..],
        &[
            "--oidc-issuer",
            "http://login.example/t",
            "--oidc-audience",
            "a",
        ][..],
    ] {
        let problems = parse(bad).validate().unwrap_err();
        assert!(problems[0].contains("KILN_OIDC"), "{problems:?}");
    }
}

#[test]
fn the_slot_share_gives_each_client_at_least_one_slot() {
    let slots = |share: &str, max: &str| {
        parse(&["--slot-share", share, "--max-concurrency", max]).owner_slots()
    };
    assert_eq!(parse(&[]).owner_slots(), Some(2), "half of 4 by default");
    assert_eq!(slots("0.5", "7"), Some(3));
    assert_eq!(slots("0.01", "4"), Some(1));
    assert_eq!(slots("1", "4"), None);
    assert_eq!(slots("0.5", "1"), None, "one slot: nothing to share");
    for bad in ["0", "-0.5", "1.5", "NaN"] {
        let flag = format!("--slot-share={bad}");
        assert!(parse(&[&flag]).validate().is_err(), "{bad}");
    }
}

#[test]
fn claiming_ahead_is_on_for_postgresql_and_off_for_sqlite_by_default() {
    let pg = |args: &[&str]| {
        let mut all = vec!["--database", "postgres://kiln@db/kiln"];
        all.extend_from_slice(args);
        parse(&all)
    };
    assert_eq!(
        parse(&[]).claim_ahead(),
        0,
        "SQLite: one write per job instead"
    );
    assert_eq!(pg(&[]).claim_ahead(), 64, "16 × the default 4 slots");
    assert_eq!(pg(&["--max-concurrency", "1024"]).claim_ahead(), 4096);
    assert_eq!(pg(&["--claim-ahead", "0"]).claim_ahead(), 0);
    assert_eq!(parse(&["--claim-ahead", "8"]).claim_ahead(), 8);
    assert_eq!(
        pg(&["--claim-ahead-wait", "2s"]).claim_ahead_wait,
        Duration::from_secs(2)
    );
    assert_eq!(parse(&[]).claim_ahead_wait, Duration::from_millis(500));
    assert!(pg(&["--claim-ahead", "5000"]).validate().is_err());
    assert!(pg(&["--claim-ahead", "4096"]).validate().is_ok());
}
