//! PDFs made in memory for tests and benchmarks, so that no binary fixture is committed.
//!
//! [`text_pdf`] writes a valid multi-page text document; the other functions write one
//! hostile file each, the shapes the extractor must refuse without panicking, hanging or
//! allocating without bound. Files are written by hand (objects, then a cross-reference
//! table with the real offsets): that keeps every byte under our control, which the hostile
//! files need, and makes generation fast.

use std::io::Write;

use flate2::Compression;
use flate2::write::ZlibEncoder;

/// Words the text pages are drawn from: common English, so language detection says
/// English and the term statistics have something to count.
const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "had",
    "they",
    "you",
    "were",
    "their",
    "one",
    "all",
    "we",
    "can",
    "her",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "time",
    "people",
    "water",
    "world",
    "house",
    "river",
    "mountain",
    "garden",
    "morning",
    "evening",
    "letter",
    "country",
    "village",
    "market",
    "window",
    "history",
    "science",
    "question",
    "answer",
    "children",
    "family",
    "friend",
    "machine",
    "engine",
    "program",
    "system",
    "report",
    "number",
    "paper",
    "table",
    "little",
    "great",
    "small",
    "large",
    "early",
    "always",
    "never",
    "often",
    "between",
    "through",
    "before",
    "after",
    "because",
    "should",
    "could",
    "about",
    "under",
    "against",
    "during",
    "without",
    "again",
    "further",
    "place",
    "light",
    "night",
    "summer",
    "winter",
    "school",
    "teacher",
    "student",
    "library",
    "journey",
    "weather",
    "storm",
    "harbour",
    "ship",
    "island",
    "forest",
    "animal",
    "bread",
    "butter",
    "kitchen",
    "doctor",
    "hospital",
    "city",
    "street",
    "railway",
    "station",
    "government",
    "company",
    "business",
    "money",
    "office",
    "building",
    "language",
    "music",
    "picture",
    "story",
    "reason",
    "problem",
    "important",
    "different",
    "following",
    "possible",
    "together",
    "however",
    "nothing",
    "something",
    "everything",
    "thought",
    "believe",
    "remember",
    "understand",
    "written",
    "spoken",
    "quickly",
    "slowly",
    "carefully",
    "certainly",
    "perhaps",
    "yesterday",
    "tomorrow",
];

/// Words per drawn line of [`text_pdf`].
const WORDS_PER_LINE: usize = 12;

/// A valid text PDF of `pages` pages, ~`words_per_page` words each, deterministic from
/// `seed`, content streams FlateDecode-compressed, Helvetica; English-like words (pick from
/// a fixed word list) so language detection says English.
///
/// Lines are drawn three ways in turn, so extraction meets each: a `Tj` string with spaces
/// followed by `T*`, a `'` string, and a `TJ` array whose words are separated by kerning
/// gaps instead of spaces. [`text_pdf_words`] returns the words each page carries.
pub fn text_pdf(pages: usize, words_per_page: usize, seed: u64) -> Vec<u8> {
    let mut w = Writer::new();
    // 1: catalog, 2: page tree, 3: font, then a page and its content per page.
    w.object(1, b"<< /Type /Catalog /Pages 2 0 R >>");
    let mut kids = Vec::with_capacity(pages * 8 + 32);
    kids.extend_from_slice(b"<< /Type /Pages /Count ");
    kids.extend_from_slice(pages.to_string().as_bytes());
    kids.extend_from_slice(b" /Kids [");
    for page in 0..pages {
        kids.extend_from_slice(format!("{} 0 R ", 4 + 2 * page).as_bytes());
    }
    kids.extend_from_slice(b"] >>");
    w.object(2, &kids);
    w.object(
        3,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    );
    let mut rng = Rng(seed);
    let mut content = Vec::with_capacity(words_per_page * 8 + 64);
    for page in 0..pages {
        let page_id = 4 + 2 * page;
        let words = page_words(&mut rng, words_per_page);
        content.clear();
        draw_page(&words, &mut content);
        w.object(
            page_id,
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
                 /Resources << /Font << /F1 3 0 R >> >> /Contents {} 0 R >>",
                page_id + 1
            )
            .as_bytes(),
        );
        w.stream(page_id + 1, "/Filter /FlateDecode", &deflate(&content));
    }
    w.finish(1, "")
}

/// The words [`text_pdf`] draws on each page for the same arguments, page by page.
pub fn text_pdf_words(pages: usize, words_per_page: usize, seed: u64) -> Vec<Vec<&'static str>> {
    let mut rng = Rng(seed);
    (0..pages)
        .map(|_| page_words(&mut rng, words_per_page))
        .collect()
}

fn page_words(rng: &mut Rng, count: usize) -> Vec<&'static str> {
    (0..count)
        .map(|_| WORDS[(rng.next() % WORDS.len() as u64) as usize])
        .collect()
}

/// The content stream of one page: 11 pt Helvetica, 14 pt leading, from the top left.
fn draw_page(words: &[&str], out: &mut Vec<u8>) {
    out.extend_from_slice(b"BT\n/F1 11 Tf\n14 TL\n72 760 Td\n");
    // Every line but the first starts by moving down one line, each kind its own way.
    for (line, chunk) in words.chunks(WORDS_PER_LINE).enumerate() {
        match line % 3 {
            0 => {
                if line > 0 {
                    out.extend_from_slice(b"T*\n");
                }
                out.push(b'(');
                out.extend_from_slice(chunk.join(" ").as_bytes());
                out.extend_from_slice(b") Tj\n");
            }
            1 => {
                // `'` moves to the next line itself.
                out.push(b'(');
                out.extend_from_slice(chunk.join(" ").as_bytes());
                out.extend_from_slice(b") '\n");
            }
            _ => {
                // A gap of 300 thousandths of an em reads as a word space.
                out.extend_from_slice(b"0 -14 Td\n[");
                for (i, word) in chunk.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b" -300 ");
                    }
                    out.push(b'(');
                    out.extend_from_slice(word.as_bytes());
                    out.push(b')');
                }
                out.extend_from_slice(b"] TJ\n");
            }
        }
    }
    out.extend_from_slice(b"ET\n");
}

/// An encrypted one-page document whose user password is not empty, so it cannot be read
/// without one (the `/U` check value matches no password we try).
pub fn encrypted() -> Vec<u8> {
    let mut w = Writer::new();
    one_page_tree(&mut w);
    w.stream(5, "", b"BT /F1 11 Tf 72 760 Td (secret) Tj ET");
    let mut rng = Rng(0x5eed);
    let o: String = (0..32)
        .map(|_| format!("{:02X}", rng.next() as u8))
        .collect();
    let u: String = (0..32)
        .map(|_| format!("{:02X}", rng.next() as u8))
        .collect();
    w.object(
        6,
        format!("<< /Filter /Standard /V 2 /R 3 /Length 128 /P -3904 /O <{o}> /U <{u}> >>")
            .as_bytes(),
    );
    w.finish(
        1,
        "/Encrypt 6 0 R /ID [<00112233445566778899AABBCCDDEEFF> <00112233445566778899AABBCCDDEEFF>]",
    )
}

/// The first half of a three-page [`text_pdf`]: the page tree names pages whose objects,
/// and the cross-reference table, were cut off.
pub fn truncated() -> Vec<u8> {
    let mut bytes = text_pdf(3, 50, 7);
    bytes.truncate(bytes.len() / 2);
    bytes
}

/// A document whose page tree root carries an array nested 100,000 deep: a recursive
/// parser without a depth bound would overflow its stack.
pub fn deep_nesting() -> Vec<u8> {
    let mut w = Writer::new();
    w.object(1, b"<< /Type /Catalog /Pages 2 0 R >>");
    let mut pages = b"<< /Type /Pages /Count 1 /Kids [3 0 R] /Deep ".to_vec();
    pages.extend(std::iter::repeat_n(b'[', 100_000));
    pages.extend(std::iter::repeat_n(b']', 100_000));
    pages.extend_from_slice(b" >>");
    w.object(2, &pages);
    w.object(
        3,
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
    );
    w.stream(4, "", b"BT /F1 11 Tf 72 760 Td (deep) Tj ET");
    w.finish(1, "")
}

/// A one-page document whose 1 MiB content stream inflates to 1 GiB of zeros.
pub fn flate_bomb() -> Vec<u8> {
    let mut w = Writer::new();
    one_page_tree(&mut w);
    w.stream(5, "/Filter /FlateDecode", &zeros_bomb(1 << 30));
    w.finish(1, "")
}

/// A zlib stream of `total` zero bytes (a multiple of 1 MiB), built without compressing
/// `total` bytes. Once the compressor has seen a full window of zeros, each further
/// mebibyte of zeros, flushed to a byte boundary, compresses to the same bytes; the stream
/// is the first mebibyte, that steady-state chunk repeated, and the end of the stream.
pub(crate) fn zeros_bomb(total: usize) -> Vec<u8> {
    use flate2::{Compress, FlushCompress};
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK];
    let mut c = Compress::new(Compression::best(), true);
    let mut encode = |input: &[u8], flush: FlushCompress| {
        let mut out = Vec::with_capacity(CHUNK / 256);
        let start = c.total_in();
        while (c.total_in() - start) < input.len() as u64 || out.is_empty() {
            let done = (c.total_in() - start) as usize;
            out.reserve(4096);
            let before = c.total_out();
            // A compressor over an in-memory buffer cannot fail; an error would mean a
            // wrong call here, and an empty chunk makes the bomb smaller, not invalid.
            if c.compress_vec(&input[done..], &mut out, flush).is_err()
                || (c.total_out() == before && done == input.len())
            {
                break;
            }
        }
        out
    };
    let first = encode(&zeros, FlushCompress::Sync);
    let steady = encode(&zeros, FlushCompress::Sync);
    let chunks = total / CHUNK;
    let mut out = Vec::with_capacity(first.len() + steady.len() * chunks + 64);
    out.extend_from_slice(&first);
    for _ in 1..chunks {
        out.extend_from_slice(&steady);
    }
    // The final empty block, then the Adler-32 of `total` zeros: a = 1, b = total mod 65521.
    out.extend_from_slice(&[0x03, 0x00]);
    let b = (total % 65_521) as u32;
    out.extend_from_slice(&((b << 16) | 1).to_be_bytes());
    out
}

/// A page tree that loops: the root's only kid is an intermediate node whose kid is the
/// root again. The page's content is an array that names itself.
pub fn page_tree_cycle() -> Vec<u8> {
    let mut w = Writer::new();
    w.object(1, b"<< /Type /Catalog /Pages 2 0 R >>");
    w.object(2, b"<< /Type /Pages /Count 2 /Kids [3 0 R 4 0 R] >>");
    w.object(
        3,
        b"<< /Type /Pages /Parent 2 0 R /Count 1 /Kids [2 0 R] >>",
    );
    w.object(
        4,
        b"<< /Type /Page /Parent 3 0 R /MediaBox [0 0 612 792] /Contents 5 0 R >>",
    );
    w.object(5, b"[5 0 R 5 0 R]");
    w.finish(1, "")
}

/// A `%PDF-` header followed by deterministic noise.
pub fn garbage() -> Vec<u8> {
    let mut rng = Rng(0xbad);
    let mut bytes = b"%PDF-1.7\n".to_vec();
    bytes.extend((0..64 * 1024).map(|_| rng.next() as u8));
    bytes
}

/// A one-page document whose content stream declares a `/Length` far longer than the
/// stream and the file.
pub fn lying_length() -> Vec<u8> {
    let mut w = Writer::new();
    one_page_tree(&mut w);
    let body = b"BT /F1 11 Tf 72 760 Td (length) Tj ET";
    w.raw_stream(5, "/Length 999999999999", body);
    w.finish(1, "")
}

/// A one-page document whose page tree declares an absurd `/Count` and whose page names a
/// content stream that does not exist.
pub fn huge_sizes() -> Vec<u8> {
    let mut w = Writer::new();
    w.object(1, b"<< /Type /Catalog /Pages 2 0 R >>");
    w.object(
        2,
        b"<< /Type /Pages /Count 9223372036854775807 /Kids [3 0 R] >>",
    );
    w.object(
        3,
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 99999999999 99999999999] /Contents 40000000 0 R >>",
    );
    w.finish(1, "")
}

/// A one-page document whose content array names itself.
pub fn content_cycle() -> Vec<u8> {
    let mut w = Writer::new();
    one_page_tree(&mut w);
    w.object(5, b"[6 0 R 5 0 R]");
    w.stream(6, "", b"BT /F1 11 Tf 72 760 Td (loop) Tj ET");
    w.finish(1, "")
}

/// A valid one-page document that exercises decoding: a WinAnsi string (`café`), a
/// two-byte font read through its FlateDecode `ToUnicode` map (`Hi`), and a form XObject
/// (`footer`) that also draws itself, which must be drawn once.
pub fn fonts_and_forms() -> Vec<u8> {
    let mut w = Writer::new();
    w.object(1, b"<< /Type /Catalog /Pages 2 0 R >>");
    w.object(2, b"<< /Type /Pages /Count 1 /Kids [3 0 R] >>");
    w.object(
        3,
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << \
          /Font << /F1 4 0 R /F2 6 0 R >> /XObject << /Fm1 8 0 R >> >> /Contents 5 0 R >>",
    );
    w.object(
        4,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    );
    w.stream(
        5,
        "",
        b"BT /F1 12 Tf 72 700 Td (caf\\351) Tj ET\n\
          BT /F2 12 Tf 72 680 Td <00010002> Tj ET\n/Fm1 Do\n",
    );
    w.object(
        6,
        b"<< /Type /Font /Subtype /Type0 /BaseFont /Custom /Encoding /Identity-H \
          /ToUnicode 7 0 R /DescendantFonts [] >>",
    );
    let cmap = b"/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n\
        /CMapName /Custom-UCS def\n/CMapType 2 def\n\
        1 begincodespacerange\n<0000> <FFFF>\nendcodespacerange\n\
        2 beginbfchar\n<0001> <0048>\n<0002> <0069>\nendbfchar\n\
        endcmap\nCMapName currentdict /CMap defineresource pop\nend\nend\n";
    w.stream(7, "/Filter /FlateDecode", &deflate(cmap));
    w.stream(
        8,
        "/Type /XObject /Subtype /Form /BBox [0 0 612 792] \
         /Resources << /Font << /F1 4 0 R >> /XObject << /Fm1 8 0 R >> >>",
        b"BT /F1 10 Tf 72 100 Td (footer) Tj ET /Fm1 Do",
    );
    w.finish(1, "")
}

/// Catalog (1), page tree (2), the page (3) drawing content object 5, Helvetica (4).
fn one_page_tree(w: &mut Writer) {
    w.object(1, b"<< /Type /Catalog /Pages 2 0 R >>");
    w.object(2, b"<< /Type /Pages /Count 1 /Kids [3 0 R] >>");
    w.object(
        3,
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
          /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
    );
    w.object(
        4,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    );
}

fn deflate(data: &[u8]) -> Vec<u8> {
    // Fast compression: text pages compress well enough at level 1, and generating a
    // 1,000-page document stays quick in debug builds.
    let mut e = ZlibEncoder::new(Vec::with_capacity(data.len() / 2), Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

/// A PDF written object by object; offsets are recorded for the cross-reference table.
struct Writer {
    out: Vec<u8>,
    offsets: Vec<(usize, usize)>,
}

impl Writer {
    fn new() -> Self {
        // The binary comment line marks the file as binary for transfer tools.
        let mut out = Vec::with_capacity(1 << 16);
        out.extend_from_slice(b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n");
        Self {
            out,
            offsets: Vec::new(),
        }
    }

    fn begin(&mut self, id: usize) {
        self.offsets.push((id, self.out.len()));
        self.out
            .extend_from_slice(format!("{id} 0 obj\n").as_bytes());
    }

    fn object(&mut self, id: usize, body: &[u8]) {
        self.begin(id);
        self.out.extend_from_slice(body);
        self.out.extend_from_slice(b"\nendobj\n");
    }

    /// A stream with a true `/Length`; `dict` holds any other entries.
    fn stream(&mut self, id: usize, dict: &str, data: &[u8]) {
        self.raw_stream(id, &format!("/Length {} {dict}", data.len()), data);
    }

    /// A stream whose dictionary is written as given, `/Length` included.
    fn raw_stream(&mut self, id: usize, dict: &str, data: &[u8]) {
        self.begin(id);
        self.out
            .extend_from_slice(format!("<< {dict} >>\nstream\n").as_bytes());
        self.out.extend_from_slice(data);
        self.out.extend_from_slice(b"\nendstream\nendobj\n");
    }

    /// The cross-reference table (objects 0..=max id, gaps free), trailer and end marker.
    fn finish(mut self, root: usize, trailer_extra: &str) -> Vec<u8> {
        let size = self.offsets.iter().map(|&(id, _)| id).max().unwrap_or(0) + 1;
        let mut table = vec![None; size];
        for &(id, offset) in &self.offsets {
            table[id] = Some(offset);
        }
        let xref = self.out.len();
        self.out
            .extend_from_slice(format!("xref\n0 {size}\n0000000000 65535 f \n").as_bytes());
        for entry in table.iter().skip(1) {
            let line = match entry {
                Some(offset) => format!("{offset:010} 00000 n \n"),
                None => "0000000000 00000 f \n".to_owned(),
            };
            self.out.extend_from_slice(line.as_bytes());
        }
        self.out.extend_from_slice(
            format!(
                "trailer\n<< /Size {size} /Root {root} 0 R {trailer_extra} >>\nstartxref\n{xref}\n%%EOF\n"
            )
            .as_bytes(),
        );
        self.out
    }
}

/// SplitMix64: a tiny deterministic generator, enough to pick words.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
