//! `csv_aggregate`: generates a seeded data set (`id,group,value,timestamp`), writes it as the
//! job's `data.csv` artifact, then parses that file and aggregates one column: its sum, its
//! mean, or count/sum/mean/min/max per group. With a `file_id` it skips the generation and
//! aggregates the owner's uploaded file through the same [`aggregate`].
//!
//! Parsing has two paths. Files without a quote character (what the generator writes, and
//! most exports) take a hand-written fast path: fixed ~1 MiB pieces split at line ends are
//! parsed in parallel with plain byte splitting, which is several times faster than the
//! `csv` crate's general state machine. A file with any quote falls back to the `csv` crate
//! for the whole file, so quoted fields, embedded commas and newlines are always right.
//! Both paths count malformed rows (wrong field count, non-numeric value) and skip them.
//!
//! Pieces are fixed by byte position and merged in file order, so the floating-point sums
//! are the same whatever the number of threads: same seed, same result, on every machine.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::time::Instant;

use async_trait::async_trait;
use kiln_domain::JobType;
use kiln_domain::job_type::{CsvFilePayload, CsvGeneratedPayload, CsvOperation, CsvPayload};
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use serde::Serialize;
use serde_json::{Value, json};

use crate::cpu::{self, Check};
use crate::{Classify, JobContext, Kernel, KernelError};

/// Rows generated per parallel unit.
const GEN_CHUNK: u64 = 64 * 1024;
/// Bytes read per block; each block is split into [`PIECE`]-sized pieces.
const BLOCK: usize = 16 << 20;
/// Bytes per parallel parse unit (a piece ends at a line end). Large enough that merging
/// the pieces' group tables costs little beside parsing them.
const PIECE: usize = 4 << 20;
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
        result["artifact"] = json!("data.csv");
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

/// Count, sum, min and max of one column.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    /// Rows.
    pub count: u64,
    /// Sum.
    pub sum: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Default for Stat {
    fn default() -> Self {
        Self {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl Stat {
    fn add(&mut self, x: f64) {
        self.count += 1;
        self.sum += x;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
    }

    fn merge(&mut self, other: &Stat) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// The aggregate of a file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Aggregate {
    /// Data rows seen (good and bad; the header and empty lines excluded).
    pub rows: u64,
    /// Rows skipped: wrong field count or a non-numeric value.
    pub bad_rows: u64,
    /// Over all good rows.
    pub total: Stat,
    /// Per group, when grouping.
    pub groups: FxHashMap<String, Stat>,
    /// Whether the `csv` crate parsed the file (it had quotes).
    pub slow_path: bool,
}

impl Aggregate {
    /// The job result for `operation`.
    pub fn to_json(&self, operation: CsvOperation, column: &str, group_by: Option<&str>) -> Value {
        let mut out = json!({
            "operation": operation,
            "column": column,
            "rows": self.rows,
            "bad_rows": self.bad_rows,
            "count": self.total.count,
        });
        match operation {
            CsvOperation::Sum => out["sum"] = json!(self.total.sum),
            CsvOperation::Mean => {
                out["sum"] = json!(self.total.sum);
                out["mean"] = json!(self.total.mean());
            }
            CsvOperation::GroupBy => {
                let mut groups: Vec<(&String, &Stat)> = self.groups.iter().collect();
                groups.sort_by(|a, b| a.0.cmp(b.0));
                out["group_by"] = json!(group_by);
                out["groups"] = groups
                    .into_iter()
                    .map(|(group, s)| {
                        json!({"group": group, "count": s.count, "sum": s.sum,
                               "mean": s.mean(), "min": s.min, "max": s.max})
                    })
                    .collect();
            }
        }
        out
    }
}

/// Which fields of a row matter.
#[derive(Debug, Clone, Copy)]
struct Columns {
    fields: usize,
    value: usize,
    group: Option<usize>,
}

/// Parses the CSV file at `path` (a header row first) and aggregates `column`, per
/// `group_by` column when given. A missing column is a permanent error naming it.
pub fn aggregate(
    path: &Path,
    column: &str,
    group_by: Option<&str>,
    check: &Check,
    progress: (f32, f32),
) -> Result<Aggregate, KernelError> {
    let mut file = File::open(path).retryable("artifact_read")?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0).max(1);
    let mut block = Vec::with_capacity(BLOCK + PIECE);
    // The header: read until the first line end.
    let header_end = loop {
        if let Some(end) = block.iter().position(|&b| b == b'\n') {
            break end;
        }
        if read_more(&mut file, &mut block, PIECE).retryable("artifact_read")? == 0 {
            break block.len();
        }
    };
    if block.contains(&b'"') {
        return aggregate_slow(path, column, group_by, check, (progress, size));
    }
    let header = String::from_utf8_lossy(&block[..header_end]);
    let columns = find_columns(&header, column, group_by)?;
    block.drain(..(header_end + 1).min(block.len()));
    let mut total = Aggregate::default();
    let mut groups = Groups::default();
    let mut consumed = header_end as u64 + 1;
    for item in read_ahead(file, block)? {
        check.stopped()?;
        let (data, quoted) = item.retryable("artifact_read")?;
        if quoted {
            return aggregate_slow(path, column, group_by, check, (progress, size));
        }
        let pieces = split_pieces(&data);
        let partials: Vec<Partial<'_>> = pieces
            .par_iter()
            .map(|piece| {
                // A cancel skips the pieces not started yet.
                if check.stopped().is_err() {
                    return Partial::default();
                }
                parse_piece(piece, columns)
            })
            .collect();
        check.stopped()?;
        for partial in partials {
            partial.merge_into(&mut total, &mut groups);
        }
        consumed += data.len() as u64;
        check.progress(
            progress.0 + (progress.1 - progress.0) * (consumed as f32 / size as f32).min(1.0),
        );
    }
    total.groups = groups.into_named();
    Ok(total)
}

/// A block of complete lines, and whether it holds a quote (the fast path cannot parse it).
type Block = std::io::Result<(Vec<u8>, bool)>;

/// Reads the rest of `file` (after `carry`, the bytes already read) in blocks of complete
/// lines on a thread of its own, one block ahead, so reading and scanning the next block
/// overlap parsing this one. Dropping the receiver stops the thread.
fn read_ahead(
    mut file: File,
    mut carry: Vec<u8>,
) -> Result<std::sync::mpsc::Receiver<Block>, KernelError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Block>(1);
    std::thread::Builder::new()
        .name("kiln-csv-reader".to_owned())
        .spawn(move || {
            loop {
                let mut block = std::mem::take(&mut carry);
                block.reserve(BLOCK);
                let eof = match read_more(&mut file, &mut block, BLOCK) {
                    Ok(n) => n == 0,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                // Send up to the last complete line; keep the rest for the next block.
                let cut = if eof {
                    block.len()
                } else {
                    match block.iter().rposition(|&b| b == b'\n') {
                        Some(i) => i + 1,
                        None => {
                            carry = block;
                            continue;
                        }
                    }
                };
                carry = block.split_off(cut);
                let quoted = block.contains(&b'"');
                if !block.is_empty() && tx.send(Ok((block, quoted))).is_err() {
                    return;
                }
                if eof {
                    return;
                }
            }
        })
        .retryable("artifact_read")?;
    Ok(rx)
}

/// Appends up to `want` bytes from `file`; returns how many were read (0 at the end).
fn read_more(file: &mut File, buf: &mut Vec<u8>, want: usize) -> std::io::Result<usize> {
    let start = buf.len();
    buf.resize(start + want, 0);
    let mut filled = 0;
    while filled < want {
        match file.read(&mut buf[start + filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                buf.truncate(start + filled);
                return Err(e);
            }
        }
    }
    buf.truncate(start + filled);
    Ok(filled)
}

/// Splits complete lines into pieces of about [`PIECE`] bytes, each ending at a line end.
fn split_pieces(data: &[u8]) -> Vec<&[u8]> {
    let mut pieces = Vec::with_capacity(data.len() / PIECE + 1);
    let mut start = 0;
    while start < data.len() {
        let mut end = (start + PIECE).min(data.len());
        if end < data.len() {
            end = data[end..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(data.len(), |i| end + i + 1);
        }
        pieces.push(&data[start..end]);
        start = end;
    }
    pieces
}

fn find_columns(
    header: &str,
    column: &str,
    group_by: Option<&str>,
) -> Result<Columns, KernelError> {
    let names: Vec<&str> = header
        .trim_end_matches('\r')
        .split(',')
        .map(str::trim)
        .collect();
    let find = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| KernelError::Permanent {
                code: "unknown_column",
                source: format!(
                    "the CSV has no column `{name}` (it has: {})",
                    names.join(", ")
                )
                .into(),
            })
    };
    Ok(Columns {
        fields: names.len(),
        value: find(column)?,
        group: group_by.map(find).transpose()?,
    })
}

/// A group key of at most 15 bytes packed into an integer with its length, so the hot
/// per-row table lookup hashes and compares one `u128` instead of calling `memcmp` (it
/// was a quarter of the parse time). Longer keys use a byte-slice table.
fn pack(key: &[u8]) -> Option<u128> {
    if key.len() > 15 {
        return None;
    }
    let mut bytes = [0u8; 16];
    bytes[..key.len()].copy_from_slice(key);
    bytes[15] = key.len() as u8;
    Some(u128::from_le_bytes(bytes))
}

fn unpack(key: u128) -> Vec<u8> {
    let bytes = key.to_le_bytes();
    bytes[..usize::from(bytes[15])].to_vec()
}

/// What the fast path found in one piece; long group keys borrow the piece's bytes.
#[derive(Default)]
struct Partial<'a> {
    rows: u64,
    bad_rows: u64,
    total: Stat,
    short: FxHashMap<u128, Stat>,
    long: FxHashMap<&'a [u8], Stat>,
}

/// Group statistics while a file is being read: short keys packed, long ones as bytes.
#[derive(Default)]
struct Groups {
    short: FxHashMap<u128, Stat>,
    long: FxHashMap<Box<[u8]>, Stat>,
}

impl Groups {
    fn into_named(self) -> FxHashMap<String, Stat> {
        let short = self.short.into_iter().map(|(k, s)| (unpack(k), s));
        let long = self.long.into_iter().map(|(k, s)| (k.into_vec(), s));
        short
            .chain(long)
            .map(|(k, s)| (String::from_utf8_lossy(&k).into_owned(), s))
            .collect()
    }
}

impl<'a> Partial<'a> {
    fn add(&mut self, group: &'a [u8], x: f64) {
        match pack(group) {
            Some(key) => self.short.entry(key).or_default().add(x),
            None => self.long.entry(group).or_default().add(x),
        }
    }

    /// Adds this piece to the running totals (keys are copied only for new groups).
    fn merge_into(self, agg: &mut Aggregate, groups: &mut Groups) {
        agg.rows += self.rows;
        agg.bad_rows += self.bad_rows;
        agg.total.merge(&self.total);
        for (key, stat) in self.short {
            groups.short.entry(key).or_default().merge(&stat);
        }
        for (key, stat) in self.long {
            match groups.long.get_mut(key) {
                Some(s) => s.merge(&stat),
                None => {
                    groups.long.insert(key.into(), stat);
                }
            }
        }
    }
}

/// The fast path: one pass over the bytes of unquoted lines, noting where the wanted
/// fields start and end, then a hand-written decimal parse of the value.
fn parse_piece(piece: &[u8], columns: Columns) -> Partial<'_> {
    let mut out = Partial::default();
    let group_col = columns.group.unwrap_or(usize::MAX);
    let mut pos = 0;
    while pos < piece.len() {
        // One pass to the line end, noting the wanted fields on the way.
        let (mut value, mut group): (&[u8], &[u8]) = (&[], &[]);
        let (mut field, mut start, mut end) = (0usize, pos, piece.len());
        for (i, &b) in piece[pos..].iter().enumerate() {
            if b == b',' {
                let at = pos + i;
                if field == columns.value {
                    value = &piece[start..at];
                } else if field == group_col {
                    group = &piece[start..at];
                }
                field += 1;
                start = at + 1;
            } else if b == b'\n' {
                end = pos + i;
                break;
            }
        }
        let mut line = &piece[start..end];
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        let empty = field == 0 && line.is_empty();
        pos = end + 1;
        if empty {
            continue;
        }
        out.rows += 1;
        if field == columns.value {
            value = line;
        } else if field == group_col {
            group = line;
        }
        let parsed = if field + 1 == columns.fields {
            parse_number(value)
        } else {
            None
        };
        let Some(x) = parsed else {
            out.bad_rows += 1;
            continue;
        };
        out.total.add(x);
        if columns.group.is_some() {
            out.add(group, x);
        }
    }
    out
}

/// Parses a CSV number. Plain decimals (`-12.345`, at most 19 digits) take Clinger's fast
/// path — an exact integer mantissa divided by an exact power of ten, which is correctly
/// rounded — and skip UTF-8 checks; anything else goes to the standard library's parser.
/// Both give the same, correctly rounded value.
fn parse_number(field: &[u8]) -> Option<f64> {
    const POW10: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    let (negative, digits) = match field {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, field),
    };
    let mut mantissa = 0u64;
    let (mut count, mut fraction, mut dot) = (0usize, 0usize, false);
    for &b in digits {
        match b {
            b'0'..=b'9' => {
                mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
                count += 1;
                fraction += usize::from(dot);
            }
            b'.' if !dot => dot = true,
            _ => return parse_slow(field),
        }
    }
    if count == 0 || count > 19 || mantissa > (1 << 53) || fraction >= POW10.len() {
        return parse_slow(field);
    }
    let value = mantissa as f64 / POW10[fraction];
    Some(if negative { -value } else { value })
}

fn parse_slow(field: &[u8]) -> Option<f64> {
    std::str::from_utf8(field).ok()?.trim().parse().ok()
}

/// The general path: the `csv` crate, for files with quoted fields. `progress` is the range
/// to report in and the file's size.
fn aggregate_slow(
    path: &Path,
    column: &str,
    group_by: Option<&str>,
    check: &Check,
    (progress, size): ((f32, f32), u64),
) -> Result<Aggregate, KernelError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .retryable("artifact_read")?;
    let header = reader
        .headers()
        .permanent("invalid_csv")?
        .iter()
        .collect::<Vec<_>>()
        .join(",");
    let columns = find_columns(&header, column, group_by)?;
    let mut agg = Aggregate {
        slow_path: true,
        ..Aggregate::default()
    };
    let mut record = csv::ByteRecord::new();
    loop {
        if agg.rows.is_multiple_of(65_536) {
            check.stopped()?;
            let read = reader.position().byte() as f32 / size as f32;
            check.progress(progress.0 + (progress.1 - progress.0) * read.min(1.0));
        }
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) if e.is_io_error() => return Err(e).retryable("artifact_read"),
            Err(_) => {
                agg.rows += 1;
                agg.bad_rows += 1;
                continue;
            }
        }
        agg.rows += 1;
        let parsed = record
            .get(columns.value)
            .filter(|_| record.len() == columns.fields)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<f64>().ok());
        let Some(x) = parsed else {
            agg.bad_rows += 1;
            continue;
        };
        agg.total.add(x);
        if let Some(g) = columns.group.and_then(|i| record.get(i)) {
            agg.groups
                .entry(String::from_utf8_lossy(g).into_owned())
                .or_default()
                .add(x);
        }
    }
    check.progress(progress.1);
    Ok(agg)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

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
    fn the_fast_number_parser_agrees_with_the_standard_one() {
        let mut cases: Vec<String> = [
            "0",
            "-0",
            "5.",
            ".5",
            "-.5",
            "523.117",
            "999.999",
            "0.001",
            "123456789012345678",
            "9007199254740993",
            "1e5",
            "-2.5E-3",
            "inf",
            "NaN",
            "",
            "-",
            ".",
            "1.2.3",
            "12a",
            " 7 ",
            "0.1",
            "0.30000000000000004",
            "1234567890.0123456789",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            x = mix(x);
            let decimals = (x % 8) as usize;
            let v = (x >> 12) % 10_000_000_000;
            let text = format!("{v}");
            let (int, frac) = text.split_at(text.len().saturating_sub(decimals));
            let sign = if x & 1 == 1 { "-" } else { "" };
            cases.push(format!(
                "{sign}{}.{frac}",
                if int.is_empty() { "0" } else { int }
            ));
        }
        for case in &cases {
            let want = case.trim().parse::<f64>().ok();
            let got = parse_number(case.as_bytes());
            assert_eq!(got.map(f64::to_bits), want.map(f64::to_bits), "{case:?}");
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

    #[test]
    fn quoted_fields_take_the_csv_crate_path_and_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "q.csv",
            "name,group,value\n\"a, inc\",x,1.5\n\"b\nline\",y,2\nc,x,\"3.5\"\n",
        );
        let agg = aggregate(
            &path,
            "value",
            Some("group"),
            &Check::detached(),
            (0.0, 1.0),
        )
        .unwrap();
        assert!(agg.slow_path);
        assert_eq!((agg.rows, agg.bad_rows), (3, 0));
        assert_eq!(agg.groups["x"].sum, 5.0);
        assert_eq!(agg.groups["y"].count, 1);
    }

    #[test]
    fn malformed_rows_are_counted_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let text = "id,value\n1,10\n2,abc\n3\n4,20,extra\n\n5,\n6,30\r\n";
        let path = write(&dir, "bad.csv", text);
        let agg = aggregate(&path, "value", None, &Check::detached(), (0.0, 1.0)).unwrap();
        assert_eq!((agg.rows, agg.bad_rows), (6, 4));
        assert_eq!(agg.total.sum, 40.0);
        assert_eq!(agg.total.mean(), Some(20.0));
        let binary = write(&dir, "bin.csv", "id,value\n\u{0}\u{1},\u{ff}\n");
        let agg = aggregate(&binary, "value", None, &Check::detached(), (0.0, 1.0)).unwrap();
        assert_eq!(agg.bad_rows, 1);
    }

    #[test]
    fn a_missing_column_is_a_permanent_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "c.csv", "a,b\n1,2\n");
        let err = aggregate(&path, "value", None, &Check::detached(), (0.0, 1.0)).unwrap_err();
        let failure = err.to_failure().unwrap();
        assert!(!failure.retryable);
        assert!(failure.message.contains("`value`"), "{}", failure.message);
        let empty = write(&dir, "e.csv", "");
        assert!(aggregate(&empty, "value", None, &Check::detached(), (0.0, 1.0)).is_err());
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
