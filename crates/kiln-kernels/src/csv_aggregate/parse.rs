//! Parsing a CSV file and aggregating one column: the fast path for unquoted files (fixed
//! pieces parsed in parallel, merged in file order), and the `csv` crate for the rest.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::mpsc::{Receiver, Sender};

/// The group tables. Group names come from uploaded files, so the hash is keyed with a
/// random key per process (aHash): a file of names crafted to collide cannot turn each
/// insert into a scan of the table, as it could with an unkeyed hash (`FxHash`, used
/// before: the parse took 442 ms against 532 here, medians; BENCHMARKS.md "Compute
/// kernels"). std's SipHash-1-3 is keyed too, but took 650 ms.
type GroupMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

use kiln_domain::job_type::CsvOperation;
use rayon::prelude::*;
use serde::Serialize;
use serde_json::{Value, json};

use super::number::parse_number;
use crate::cpu::Check;
use crate::{Classify, KernelError};

/// Bytes read per block; each block is split into [`PIECE`]-sized pieces.
pub(super) const BLOCK: usize = 16 << 20;
/// Bytes per parallel parse unit (a piece ends at a line end). Large enough that merging
/// the pieces' group tables costs little beside parsing them.
const PIECE: usize = 4 << 20;

/// Count, sum, min and max of one column.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    /// Values counted (bad rows are counted apart, in `bad_rows`).
    pub count: u64,
    /// Sum of the values.
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
    pub groups: GroupMap<String, Stat>,
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
    aggregate_in_blocks(path, column, group_by, check, progress, BLOCK)
}

/// [`aggregate`] in blocks of `block_size` bytes (tiny in tests, to cross many boundaries).
pub(super) fn aggregate_in_blocks(
    path: &Path,
    column: &str,
    group_by: Option<&str>,
    check: &Check,
    progress: (f32, f32),
    block_size: usize,
) -> Result<Aggregate, KernelError> {
    let mut file = File::open(path).retryable("artifact_read")?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0).max(1);
    let mut block = Vec::with_capacity(PIECE);
    // The header: read until the first line end.
    let header_end = loop {
        if let Some(end) = block.iter().position(|&b| b == b'\n') {
            break end;
        }
        let want = block_size.min(PIECE);
        if read_more(&mut file, &mut block, want).retryable("artifact_read")? == 0 {
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
    let (blocks, recycle) = read_ahead(file, block, block_size)?;
    for item in blocks {
        check.stopped()?;
        let (buffer, len, quoted) = item.retryable("artifact_read")?;
        if quoted {
            return aggregate_slow(path, column, group_by, check, (progress, size));
        }
        let data = &buffer[..len];
        let pieces = split_pieces(data);
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
        consumed += len as u64;
        // Back to the reader to be refilled (it has stopped if the send fails).
        let _ = recycle.send(buffer);
        check.progress(
            progress.0 + (progress.1 - progress.0) * (consumed as f32 / size as f32).min(1.0),
        );
    }
    total.groups = groups.into_named();
    Ok(total)
}

/// A buffer, how many of its bytes are complete lines, and whether they hold a quote.
type Filled = std::io::Result<(Vec<u8>, usize, bool)>;

/// Reads the rest of `file` (after `carry`, the bytes already read) in blocks of complete
/// lines on a thread of its own, one block ahead, so reading and scanning the next block
/// overlap parsing this one. Parsed buffers come back through the returned sender to be
/// refilled: three exist (parsed, queued, being read), none allocated and zeroed per block
/// (fresh 16 MiB blocks made the allocator hold ~115 MB). Dropping the receiver stops it.
fn read_ahead(
    mut file: File,
    mut carry: Vec<u8>,
    block_size: usize,
) -> Result<(Receiver<Filled>, Sender<Vec<u8>>), KernelError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Filled>(1);
    let (recycle, returned) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::Builder::new()
        .name("kiln-csv-reader".to_owned())
        .spawn(move || {
            let mut spare = None;
            loop {
                let mut buffer = spare
                    .take()
                    .or_else(|| returned.try_recv().ok())
                    .unwrap_or_default();
                let start = carry.len();
                if buffer.len() < start + block_size {
                    buffer.resize(start + block_size, 0);
                }
                buffer[..start].copy_from_slice(&carry);
                carry.clear();
                let read = match fill(&mut file, &mut buffer[start..start + block_size]) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let (filled, eof) = (start + read, read < block_size);
                // Send up to the last complete line; carry the rest to the next block.
                let cut = if eof {
                    filled
                } else {
                    match buffer[..filled].iter().rposition(|&b| b == b'\n') {
                        Some(i) => i + 1,
                        None => {
                            // A line longer than the block: read on.
                            carry.extend_from_slice(&buffer[..filled]);
                            spare = Some(buffer);
                            continue;
                        }
                    }
                };
                carry.extend_from_slice(&buffer[cut..filled]);
                let quoted = buffer[..cut].contains(&b'"');
                if cut > 0 && tx.send(Ok((buffer, cut, quoted))).is_err() {
                    return;
                }
                if eof {
                    return;
                }
            }
        })
        .retryable("artifact_read")?;
    Ok((rx, recycle))
}

/// Appends up to `want` bytes from `file`; returns how many were read (0 at the end).
fn read_more(file: &mut File, buf: &mut Vec<u8>, want: usize) -> std::io::Result<usize> {
    let start = buf.len();
    buf.resize(start + want, 0);
    let read = fill(file, &mut buf[start..]);
    buf.truncate(start + *read.as_ref().unwrap_or(&0));
    read
}

/// Reads into all of `buf` unless the file ends first; returns the bytes read.
fn fill(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
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
    short: GroupMap<u128, Stat>,
    long: GroupMap<&'a [u8], Stat>,
}

/// Group statistics while a file is being read: short keys packed, long ones as bytes.
#[derive(Default)]
struct Groups {
    short: GroupMap<u128, Stat>,
    long: GroupMap<Box<[u8]>, Stat>,
}

impl Groups {
    fn into_named(self) -> GroupMap<String, Stat> {
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
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
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
}
