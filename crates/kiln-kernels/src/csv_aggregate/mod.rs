//! `csv_aggregate`: generates a seeded data set (`id,group,value,timestamp`), writes it as the
//! job's `data.csv` artifact, then parses that file and aggregates one column: its sum, its
//! mean, or count/sum/mean/min/max per group. With a `file_id` it skips the generation and
//! aggregates the owner's uploaded file through the same [`aggregate`].
//!
//! Parsing has two paths. Files without a quote character (what the generator writes, and
//! most exports) take a hand-written fast path: fixed 4 MiB pieces split at line ends are
//! parsed in parallel with plain byte splitting, which is several times faster than the
//! `csv` crate's general state machine. A file with any quote falls back to the `csv` crate
//! for the whole file, so quoted fields, embedded commas and newlines are always right.
//! Both paths count malformed rows (wrong field count, non-numeric value) and skip them.
//!
//! Pieces are fixed by byte position and merged in file order, so the floating-point sums
//! are the same whatever the number of threads: same seed, same result, on every machine.
//!
//! Here: the kernel and the generator; `parse`: reading and aggregating a file;
//! `number`: the decimal fast path.

use std::io::{BufWriter, Write};
use std::time::Instant;

use async_trait::async_trait;
use kiln_domain::JobType;
use kiln_domain::job_type::{CsvFilePayload, CsvGeneratedPayload, CsvOperation, CsvPayload};
use rayon::prelude::*;
use serde_json::{Value, json};

use crate::cpu::{self, Check};
use crate::{Classify, JobContext, Kernel, KernelError};

mod number;
mod parse;

pub use parse::{Aggregate, Stat, aggregate};

/// Rows generated per parallel unit.
const GEN_CHUNK: u64 = 64 * 1024;
/// The first timestamp of the generated data (2023-11-14T22:13:20Z).
const EPOCH: u64 = 1_700_000_000;
/// The header of the generated file.
const HEADER: &str = "id,group,value,timestamp";

/// The `csv_aggregate` kernel.
#[derive(Debug, Clone, Copy)]
pub struct CsvAggregate;

#[async_trait]
impl Kernel for CsvAggregate {
    fn job_type(&self) -> JobType {
        JobType::CsvAggregate
    }

    async fn run(&self, ctx: JobContext) -> Result<Value, KernelError> {
        match CsvPayload::parse(&ctx.payload).permanent("invalid_input")? {
            CsvPayload::Generated(p) => run_generated(ctx, p).await,
            CsvPayload::File(p) => run_file(ctx, p).await,
        }
    }
}

async fn run_generated(ctx: JobContext, p: CsvGeneratedPayload) -> Result<Value, KernelError> {
    let check = Check::new(&ctx);
    let (path, file) = ctx
        .artifacts
        .create("data.csv")
        .retryable("artifact_write")?;
    let log = ctx.log.clone();
    cpu::run(move || {
        let started = Instant::now();
        let bytes = generate(
            BufWriter::with_capacity(1 << 20, file),
            p.rows,
            p.groups,
            p.seed,
            &check,
            (0.0, 0.5),
        )?;
        let generate_ms = started.elapsed().as_secs_f64() * 1e3;
        log.line(format!(
            "generated {} rows ({} MB) in {generate_ms:.0} ms",
            p.rows,
            bytes >> 20
        ));
        let started = Instant::now();
        let group_by = (p.operation == CsvOperation::GroupBy).then_some("group");
        let agg = aggregate(&path, p.column.as_str(), group_by, &check, (0.5, 1.0))?;
        let aggregate_ms = started.elapsed().as_secs_f64() * 1e3;
        log.line(format!(
            "parsed and aggregated {} rows in {aggregate_ms:.0} ms",
            agg.rows
        ));
        let mut result = agg.to_json(p.operation, p.column.as_str(), group_by);
        result["generate_ms"] = json!(generate_ms);
        result["aggregate_ms"] = json!(aggregate_ms);
        result["bytes"] = json!(bytes);
        Ok(result)
    })
    .await?
}

/// Aggregates the owner's uploaded file. A malformed file gives a result with its bad rows
/// counted, or a permanent error (a missing column, no header); never a panic.
async fn run_file(ctx: JobContext, p: CsvFilePayload) -> Result<Value, KernelError> {
    let inputs = ctx.inputs.clone().ok_or_else(|| KernelError::Permanent {
        code: "no_object_storage",
        source: "this node has no object storage for uploaded files".into(),
    })?;
    let file = inputs.local(&p.file_id).await?;
    let check = Check::new(&ctx);
    let log = ctx.log.clone();
    cpu::run(move || {
        let started = Instant::now();
        let agg = aggregate(
            file.path(),
            &p.column,
            p.group_by.as_deref(),
            &check,
            (0.0, 1.0),
        )?;
        let aggregate_ms = started.elapsed().as_secs_f64() * 1e3;
        log.line(format!(
            "parsed and aggregated {} rows ({} bad) of {} in {aggregate_ms:.0} ms",
            agg.rows,
            agg.bad_rows,
            file.meta().name
        ));
        let mut result = agg.to_json(p.operation, &p.column, p.group_by.as_deref());
        result["file_id"] = json!(p.file_id);
        result["bytes"] = json!(file.meta().size);
        result["aggregate_ms"] = json!(aggregate_ms);
        Ok(result)
    })
    .await?
}

/// SplitMix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Row `i` of the data set: (group, value in thousandths, timestamp).
pub fn row(seed: u64, groups: u32, i: u64) -> (u32, u64, u64) {
    let r = mix(seed ^ mix(i));
    let group = (r % u64::from(groups)) as u32;
    let milli = (r >> 24) % 1_000_000;
    (group, milli, EPOCH + i)
}

/// Writes the data set as CSV; returns the bytes written. Rows are formatted in parallel
/// chunks and written in order.
pub fn generate(
    mut out: impl Write,
    rows: u64,
    groups: u32,
    seed: u64,
    check: &Check,
    progress: (f32, f32),
) -> Result<u64, KernelError> {
    out.write_all(HEADER.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .retryable("artifact_write")?;
    let mut written = HEADER.len() as u64 + 1;
    let batch = (rayon::current_num_threads() as u64 * 2).max(1);
    let chunks = rows.div_ceil(GEN_CHUNK);
    let mut next = 0;
    while next < chunks {
        check.stopped()?;
        let end = (next + batch).min(chunks);
        let texts: Vec<Vec<u8>> = (next..end)
            .into_par_iter()
            .map(|c| format_rows(seed, groups, c * GEN_CHUNK, ((c + 1) * GEN_CHUNK).min(rows)))
            .collect();
        for text in &texts {
            out.write_all(text).retryable("artifact_write")?;
            written += text.len() as u64;
        }
        next = end;
        check.progress(progress.0 + (progress.1 - progress.0) * next as f32 / chunks as f32);
    }
    out.flush().retryable("artifact_write")?;
    Ok(written)
}

fn format_rows(seed: u64, groups: u32, from: u64, to: u64) -> Vec<u8> {
    let mut text = Vec::with_capacity(((to - from) * 48) as usize);
    let mut num = itoa::Buffer::new();
    for i in from..to {
        let (group, milli, ts) = row(seed, groups, i);
        text.extend_from_slice(num.format(i).as_bytes());
        text.extend_from_slice(b",g");
        // Zero-padded to five digits, so groups sort the same as text and as numbers.
        let g = num.format(group).as_bytes();
        text.extend(std::iter::repeat_n(b'0', 5usize.saturating_sub(g.len())));
        text.extend_from_slice(g);
        text.push(b',');
        text.extend_from_slice(num.format(milli / 1000).as_bytes());
        let frac = milli % 1000;
        text.extend_from_slice(&[
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
            b',',
        ]);
        text.extend_from_slice(num.format(ts).as_bytes());
        text.push(b'\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs::File;

    use super::*;

    fn generated(rows: u64, groups: u32, seed: u64) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.csv");
        let file = BufWriter::new(File::create(&path).unwrap());
        generate(file, rows, groups, seed, &Check::detached(), (0.0, 1.0)).unwrap();
        (dir, path)
    }

    #[test]
    fn aggregates_match_an_independent_computation_over_the_rows() {
        let (rows, groups, seed) = (300_000, 37, 5);
        let (_dir, path) = generated(rows, groups, seed);
        // Independent: straight from the generator's row function, in exact integers.
        let mut expected: BTreeMap<String, (u64, u64, u64, u64)> = BTreeMap::new();
        for i in 0..rows {
            let (g, milli, _) = row(seed, groups, i);
            let e = expected
                .entry(format!("g{g:05}"))
                .or_insert((0, 0, u64::MAX, 0));
            e.0 += 1;
            e.1 += milli;
            e.2 = e.2.min(milli);
            e.3 = e.3.max(milli);
        }
        let agg = aggregate(
            &path,
            "value",
            Some("group"),
            &Check::detached(),
            (0.0, 1.0),
        )
        .unwrap();
        assert!(!agg.slow_path);
        assert_eq!((agg.rows, agg.bad_rows), (rows, 0));
        assert_eq!(agg.groups.len(), expected.len());
        let total_milli: u64 = expected.values().map(|e| e.1).sum();
        assert!((agg.total.sum - total_milli as f64 / 1000.0).abs() < 1e-3);
        for (g, (count, sum, min, max)) in &expected {
            let s = agg.groups[g];
            assert_eq!(s.count, *count, "{g}");
            assert!((s.sum - *sum as f64 / 1000.0).abs() < 1e-6, "{g}");
            assert_eq!(
                (s.min, s.max),
                (*min as f64 / 1000.0, *max as f64 / 1000.0),
                "{g}"
            );
        }
        let json = agg.to_json(CsvOperation::GroupBy, "value", Some("group"));
        let names: Vec<&str> = json["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["group"].as_str().unwrap())
            .collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted by group");
    }

    #[test]
    fn small_blocks_give_the_same_aggregate_as_one_block() {
        // Lines longer than a block, a last line without its line end, bad rows.
        let mut text = String::from("id,group,value\n");
        for i in 0..500 {
            let group = if i % 7 == 0 {
                "a-group-name-longer-than-15"
            } else {
                "g"
            };
            text += &format!("{i},{group}{},{}.5\n", i % 3, i * 3);
        }
        text.push_str("x,g1,notanumber\n501,last,4");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.csv");
        std::fs::write(&path, text).unwrap();
        let check = Check::detached();
        let run = |block| {
            parse::aggregate_in_blocks(&path, "value", Some("group"), &check, (0.0, 1.0), block)
                .unwrap()
        };
        let whole = run(parse::BLOCK);
        assert_eq!((whole.rows, whole.bad_rows), (502, 1));
        assert_eq!(whole.groups["last"].sum, 4.0);
        for block in [1, 7, 16, 64, 1000] {
            assert_eq!(run(block), whole, "block = {block}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_file_and_result() {
        let (_a, pa) = generated(50_000, 10, 9);
        let (_b, pb) = generated(50_000, 10, 9);
        let (_c, pc) = generated(50_000, 10, 10);
        let (ta, tb, tc) = (
            std::fs::read(&pa).unwrap(),
            std::fs::read(&pb).unwrap(),
            std::fs::read(&pc).unwrap(),
        );
        assert_eq!(ta, tb);
        assert_ne!(ta, tc);
        let first = std::str::from_utf8(&ta).unwrap().lines().nth(1).unwrap();
        assert!(first.starts_with("0,g000"), "{first}");
        assert_eq!(first.split(',').count(), 4);
    }

    #[tokio::test]
    async fn the_kernel_writes_the_artifact_and_stops_on_cancel() {
        let (ctx, _log) =
            crate::test_context(json!({"rows": 20_000, "groups": 4, "operation": "group_by"}));
        let artifacts = ctx.artifacts.clone();
        let progress = ctx.progress.clone();
        let result = CsvAggregate.run(ctx).await.unwrap();
        assert_eq!(result["rows"], 20_000);
        assert_eq!(result["groups"].as_array().unwrap().len(), 4);
        assert_eq!(progress.get(), 1.0);
        let on_disk = std::fs::metadata(artifacts.dir().join("data.csv"))
            .unwrap()
            .len();
        assert_eq!(result["bytes"], on_disk);
        artifacts.reset().unwrap();

        let (ctx, _log) =
            crate::test_context(json!({"rows": 10_000_000, "groups": 10_000, "operation": "sum"}));
        let (cancel, progress, artifacts) = (
            ctx.cancel.clone(),
            ctx.progress.clone(),
            ctx.artifacts.clone(),
        );
        let run = tokio::spawn(async move { CsvAggregate.run(ctx).await });
        crate::tests::wait_for_progress(&progress).await;
        cancel.cancel();
        let result = run.await.unwrap();
        assert!(matches!(result, Err(KernelError::Cancelled)), "{result:?}");
        artifacts.reset().unwrap();
    }

    /// `text` uploaded by `owner` into objects under `dir`; returns the inputs and file id.
    async fn uploaded(
        dir: &tempfile::TempDir,
        owner: kiln_domain::UserId,
        text: &str,
    ) -> (crate::Inputs, String) {
        let objects = kiln_objects::Objects::local(&dir.path().join("objects")).unwrap();
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(
            text.to_owned(),
        ))]);
        let file = kiln_objects::NewFile {
            name: "upload.csv".into(),
            content_type: "text/csv".into(),
            created_at: chrono::Utc::now(),
        };
        let meta = objects.file_put(owner, file, body, 1 << 20).await.unwrap();
        let inputs = crate::Inputs::new(objects, owner, dir.path().join("scratch"));
        (inputs, meta.id.to_string())
    }

    #[tokio::test]
    async fn an_uploaded_file_is_aggregated_with_bad_rows_counted() {
        let dir = tempfile::tempdir().unwrap();
        let owner = kiln_domain::UserId(7);
        let text = "city,amount,note\n\"Paris, FR\",10.5,a\nRome,2,\"x\"\"y\"\n\"Paris, FR\",oops,b\nRome\nRome,4,c\n";
        let (inputs, file_id) = uploaded(&dir, owner, text).await;
        let payload = json!({"file_id": file_id, "operation": "group_by", "column": "amount", "group_by": "city"});
        let (mut ctx, _log) = crate::test_context(payload);
        ctx.inputs = Some(inputs.clone());
        let progress = ctx.progress.clone();
        let result = CsvAggregate.run(ctx).await.unwrap();
        assert_eq!(
            (result["rows"].as_u64(), result["bad_rows"].as_u64()),
            (Some(5), Some(2))
        );
        assert_eq!(result["groups"][0]["group"], "Paris, FR");
        assert_eq!(result["groups"][0]["sum"], 10.5);
        assert_eq!(result["groups"][1]["group"], "Rome");
        assert_eq!(result["groups"][1]["count"], 2);
        assert_eq!(result["groups"][1]["mean"], 3.0);
        assert_eq!(progress.get(), 1.0);

        // A missing column and a file that is not the owner's are permanent errors.
        let payload = json!({"file_id": file_id, "operation": "sum", "column": "nope"});
        let (mut ctx, _log) = crate::test_context(payload);
        ctx.inputs = Some(inputs);
        let failure = CsvAggregate
            .run(ctx)
            .await
            .unwrap_err()
            .to_failure()
            .unwrap();
        assert_eq!(
            (failure.code.as_str(), failure.retryable),
            ("unknown_column", false)
        );
        let other = crate::Inputs::new(
            kiln_objects::Objects::local(&dir.path().join("objects")).unwrap(),
            kiln_domain::UserId(8),
            dir.path().join("scratch"),
        );
        let payload = json!({"file_id": file_id, "operation": "sum", "column": "amount"});
        let (mut ctx, _log) = crate::test_context(payload);
        ctx.inputs = Some(other);
        let failure = CsvAggregate
            .run(ctx)
            .await
            .unwrap_err()
            .to_failure()
            .unwrap();
        assert_eq!(
            (failure.code.as_str(), failure.retryable),
            ("file_not_found", false)
        );
    }
}
