//! The text of a PDF, page by page, bounded in memory and time whatever the file holds.
//!
//! `lopdf` parses the file (its parser bounds nesting and the streams it inflates while
//! loading) and resolves font encodings; the rest is ours (ADR 0015): the walk of the page
//! tree and of content arrays with cycle checks, the inflation of content streams against a
//! per-stream and a per-document budget, and the reading of the text operators. Uploaded
//! files come from users, so every step assumes the file lies.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::{Duration, Instant};

use lopdf::content::{Content, Operation};
use lopdf::{Dictionary, Document, Encoding, LoadOptions, Object, ObjectId, Stream};

/// Bounds on one document.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most pages read; a document with more fails with [`PdfError::TooLarge`].
    pub max_pages: usize,
    /// Most bytes one stream may inflate to (content, form, `ToUnicode` and object streams).
    pub max_stream_bytes: usize,
    /// Most bytes all the content, form and `ToUnicode` streams of the document may inflate
    /// to together.
    pub max_total_bytes: usize,
    /// Deepest page tree, and deepest nesting of forms drawn inside forms. (Nesting of
    /// arrays and dictionaries inside one object is bounded by the parser itself, at 100.)
    pub max_depth: usize,
}

impl Default for Limits {
    /// 10,000 pages (long books have 1,000–2,000); 32 MiB per stream (a dense text page
    /// inflates to tens of KiB, a page of vector drawing to a few MiB); 256 MiB for the
    /// document, which bounds the work on it to about a second of inflating and parsing;
    /// depth 64 (real page trees are 3–6 deep and forms rarely nest past 3).
    fn default() -> Self {
        Self {
            max_pages: 10_000,
            max_stream_bytes: 32 << 20,
            max_total_bytes: 256 << 20,
            max_depth: 64,
        }
    }
}

/// Why a document gave no text.
#[derive(Debug, thiserror::Error)]
pub enum PdfError {
    /// No `%PDF-` header in the first 1024 bytes.
    #[error("not a PDF file (no %PDF- header)")]
    NotPdf,
    /// Encrypted with a password we do not have.
    #[error("the PDF is password-protected")]
    Encrypted,
    /// Unparsable, truncated, or the parser failed in a way we caught.
    #[error("the PDF is damaged: {0}")]
    Corrupt(String),
    /// A bound in [`Limits`] was reached.
    #[error("the PDF is too large: {0}")]
    TooLarge(String),
    /// The progress callback asked to stop.
    #[error("cancelled")]
    Stopped,
}

/// `true` when `head` (the first bytes of a file) is a PDF: `%PDF-` within the first 1024
/// bytes. (Readers accept junk before the header, as some mail gateways add it.)
pub fn is_pdf(head: &[u8]) -> bool {
    head[..head.len().min(1024)]
        .windows(5)
        .any(|w| w == b"%PDF-")
}

/// The text of every page, in page order. `keep_going(done, total)` is called after each
/// page and at least every ~10 ms of work on a page; when it returns false, stop with
/// [`PdfError::Stopped`].
///
/// A file encrypted with an empty user password (which viewers open without asking) is
/// read; one that needs a password is [`PdfError::Encrypted`].
pub fn extract(
    bytes: &[u8],
    limits: &Limits,
    keep_going: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Vec<String>, PdfError> {
    if !is_pdf(bytes) {
        return Err(PdfError::NotPdf);
    }
    // A panic inside the callback is the caller's, not the file's: carry it out unchanged.
    let mut callback_panic = None;
    let mut check = |done: usize, total: usize| match catch_unwind(AssertUnwindSafe(|| {
        keep_going(done, total)
    })) {
        Ok(go_on) => go_on,
        Err(payload) => {
            callback_panic = Some(payload);
            false
        }
    };
    // Whatever else panics is the parser meeting a file it did not expect.
    let result = catch_unwind(AssertUnwindSafe(|| {
        read_document(bytes, limits, &mut check)
    }));
    if let Some(payload) = callback_panic {
        resume_unwind(payload);
    }
    result.unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".to_owned());
        Err(PdfError::Corrupt(format!("the parser failed: {what}")))
    })
}

fn read_document(
    bytes: &[u8],
    limits: &Limits,
    check: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Vec<String>, PdfError> {
    let options = LoadOptions {
        max_decompressed_size: Some(limits.max_stream_bytes),
        ..LoadOptions::default()
    };
    let doc = Document::load_mem_with_options(bytes, options).map_err(|e| match e {
        lopdf::Error::Decryption(_) | lopdf::Error::InvalidPassword => PdfError::Encrypted,
        lopdf::Error::Decompress(lopdf::DecompressError::MemoryLimitExceeded { .. }) => {
            too_large_stream(limits)
        }
        other => PdfError::Corrupt(other.to_string()),
    })?;
    // Once decrypted, the loader drops `/Encrypt` from the trailer; still there means no
    // password we tried opened it.
    if doc.trailer.has(b"Encrypt") {
        return Err(PdfError::Encrypted);
    }
    let pages = page_list(&doc, limits)?;
    let total = pages.len();
    let mut reader = Reader {
        doc: &doc,
        limits,
        budget: limits.max_total_bytes,
        fonts: HashMap::new(),
        check,
        done: 0,
        total,
        last_check: Instant::now(),
    };
    let mut texts = Vec::with_capacity(total);
    for (page_id, resources) in pages {
        let mut text = Text::default();
        reader.page(page_id, resources, &mut text)?;
        texts.push(text.finish());
        reader.done += 1;
        reader.last_check = Instant::now();
        if !(reader.check)(reader.done, total) {
            return Err(PdfError::Stopped);
        }
    }
    Ok(texts)
}

fn too_large_stream(limits: &Limits) -> PdfError {
    PdfError::TooLarge(format!(
        "a stream inflates to more than {} bytes",
        limits.max_stream_bytes
    ))
}

/// The pages in order, each with the resources it inherits, by an explicit-stack walk of
/// the page tree. Every node is visited at most once, so a tree that loops or names a node
/// twice (which could multiply the walk) is refused rather than followed.
fn page_list<'d>(
    doc: &'d Document,
    limits: &Limits,
) -> Result<Vec<(ObjectId, Option<&'d Dictionary>)>, PdfError> {
    let root = doc
        .catalog()
        .and_then(|c| c.get(b"Pages"))
        .and_then(Object::as_reference)
        .map_err(|_| PdfError::Corrupt("no page tree".to_owned()))?;
    let mut seen = HashSet::new();
    let mut pages = Vec::new();
    // (node, inherited resources, depth); kids are pushed in reverse to pop in order.
    let mut stack = vec![(root, None, 0usize)];
    while let Some((id, inherited, depth)) = stack.pop() {
        if !seen.insert(id) {
            return Err(PdfError::Corrupt(format!(
                "the page tree reaches object {} twice",
                id.0
            )));
        }
        if depth > limits.max_depth {
            return Err(PdfError::TooLarge(format!(
                "the page tree is deeper than {}",
                limits.max_depth
            )));
        }
        let node = doc
            .get_dictionary(id)
            .map_err(|_| PdfError::Corrupt(format!("page tree object {} is missing", id.0)))?;
        let resources = node
            .get(b"Resources")
            .ok()
            .and_then(|r| doc.dereference(r).ok())
            .and_then(|(_, r)| r.as_dict().ok())
            .or(inherited);
        match node.get(b"Kids") {
            Ok(kids) => {
                let kids = doc
                    .dereference(kids)
                    .ok()
                    .and_then(|(_, k)| k.as_array().ok())
                    .ok_or_else(|| PdfError::Corrupt(format!("bad /Kids in object {}", id.0)))?;
                for kid in kids.iter().rev() {
                    let kid = kid.as_reference().map_err(|_| {
                        PdfError::Corrupt(format!("a kid of object {} is not a reference", id.0))
                    })?;
                    stack.push((kid, resources, depth + 1));
                }
            }
            Err(_) => {
                if pages.len() == limits.max_pages {
                    return Err(PdfError::TooLarge(format!(
                        "more than {} pages",
                        limits.max_pages
                    )));
                }
                pages.push((id, resources));
            }
        }
    }
    Ok(pages)
}

/// What one document's pages share: the inflation budget, the fonts decoded so far and the
/// progress callback.
struct Reader<'d, 'c> {
    doc: &'d Document,
    limits: &'c Limits,
    /// Bytes the document may still inflate.
    budget: usize,
    /// Decoders of the fonts met so far, by object, so that a font shared by every page
    /// (and its `ToUnicode` map) is decoded once.
    fonts: HashMap<ObjectId, Option<Encoding<'d>>>,
    check: &'c mut dyn FnMut(usize, usize) -> bool,
    done: usize,
    total: usize,
    last_check: Instant,
}

/// How often, at least, the callback hears from a long page.
const CHECK_EVERY: Duration = Duration::from_millis(10);
/// A `TJ` gap wider than this (in thousandths of an em) reads as a word space: word gaps
/// set by kerning are 250–350, kerning inside a word under 100.
const TJ_SPACE: f32 = 180.0;

impl<'d> Reader<'d, '_> {
    fn page(
        &mut self,
        page_id: ObjectId,
        resources: Option<&'d Dictionary>,
        text: &mut Text,
    ) -> Result<(), PdfError> {
        let page = self
            .doc
            .get_dictionary(page_id)
            .map_err(|_| PdfError::Corrupt(format!("page object {} is missing", page_id.0)))?;
        let mut streams = Vec::new();
        if let Ok(contents) = page.get(b"Contents") {
            self.content_streams(contents, &mut HashSet::new(), &mut streams)?;
        }
        // A page's streams are one content stream cut in pieces (an operator may span two),
        // so they are joined before parsing.
        let mut data = Vec::new();
        for stream in streams {
            data.extend_from_slice(&self.inflate(stream)?);
            data.push(b'\n');
        }
        self.draw(&data, resources, 0, &mut Vec::new(), text)
    }

    /// The streams `/Contents` names, through references and arrays, each at most once.
    fn content_streams(
        &self,
        object: &'d Object,
        seen: &mut HashSet<ObjectId>,
        out: &mut Vec<&'d Stream>,
    ) -> Result<(), PdfError> {
        let mut object = object;
        while let Object::Reference(id) = object {
            if !seen.insert(*id) {
                return Err(PdfError::Corrupt(format!(
                    "page contents reach object {} twice",
                    id.0
                )));
            }
            match self.doc.objects.get(id) {
                Some(next) => object = next,
                // A missing stream draws nothing; viewers show the rest of the page.
                None => return Ok(()),
            }
        }
        match object {
            Object::Stream(stream) => out.push(stream),
            Object::Array(items) => {
                for item in items {
                    // Arrays inside the array are not allowed; references to streams are.
                    if matches!(item, Object::Reference(_)) {
                        self.content_streams(item, seen, out)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The stream's data, inflated within the per-stream bound and what remains of the
    /// document's. FlateDecode (nearly every content stream) is inflated here, through a
    /// reader that stops one byte past the bound; other filters go to lopdf's bounded
    /// decoders.
    fn inflate(&mut self, stream: &Stream) -> Result<Vec<u8>, PdfError> {
        let cap = self.limits.max_stream_bytes.min(self.budget);
        let filters = stream.filters().unwrap_or_default();
        let plain_flate =
            filters == [b"FlateDecode".as_slice()] && !stream.dict.has(b"DecodeParms");
        let data = if filters.is_empty() {
            stream.content.clone()
        } else if plain_flate {
            let mut out = Vec::with_capacity((stream.content.len() * 4).min(cap));
            let reader = flate2::read::ZlibDecoder::new(stream.content.as_slice());
            // A damaged stream keeps what inflated before the damage, as viewers do.
            let _ = reader.take(cap as u64 + 1).read_to_end(&mut out);
            out
        } else {
            match stream.decompressed_content_with_limit(cap) {
                Ok(data) => data,
                Err(lopdf::Error::Decompress(lopdf::DecompressError::MemoryLimitExceeded {
                    ..
                })) => vec![0; cap + 1],
                // A filter we cannot decode (an image codec) holds no text.
                Err(_) => Vec::new(),
            }
        };
        if data.len() > cap {
            return Err(self.over_budget(cap));
        }
        self.budget -= data.len();
        Ok(data)
    }

    fn over_budget(&self, cap: usize) -> PdfError {
        if cap == self.limits.max_stream_bytes {
            too_large_stream(self.limits)
        } else {
            PdfError::TooLarge(format!(
                "the document inflates to more than {} bytes",
                self.limits.max_total_bytes
            ))
        }
    }

    /// Reads one content stream (a page's, or a form's drawn with `Do`) into `text`.
    fn draw(
        &mut self,
        data: &[u8],
        resources: Option<&'d Dictionary>,
        depth: usize,
        forms: &mut Vec<ObjectId>,
        text: &mut Text,
    ) -> Result<(), PdfError> {
        let mut font: Option<ObjectId> = None;
        let mut line_y: Option<f32> = None;
        for (n, op) in Content::<Vec<Operation>>::decode_iter(data).enumerate() {
            if n % 1024 == 1023 && self.last_check.elapsed() >= CHECK_EVERY {
                self.last_check = Instant::now();
                if !(self.check)(self.done, self.total) {
                    return Err(PdfError::Stopped);
                }
            }
            // A syntax error ends the stream; the text before it is kept, as viewers do.
            let Ok(op) = op else { break };
            let args = &op.operands;
            match op.operator.as_str() {
                "Tf" => {
                    font = args
                        .first()
                        .and_then(|name| name.as_name().ok())
                        .and_then(|name| self.font_id(resources, name));
                }
                "Tj" => self.show(font, args.first(), text),
                "'" => {
                    text.newline();
                    self.show(font, args.first(), text);
                }
                "\"" => {
                    text.newline();
                    self.show(font, args.get(2), text);
                }
                "TJ" => {
                    for item in args
                        .first()
                        .and_then(|a| a.as_array().ok())
                        .into_iter()
                        .flatten()
                    {
                        match item.as_float() {
                            Ok(gap) if -gap > TJ_SPACE => text.space(),
                            Ok(_) => {}
                            Err(_) => self.show(font, Some(item), text),
                        }
                    }
                }
                "Td" | "TD" => {
                    let dy = args.get(1).and_then(|y| y.as_float().ok()).unwrap_or(0.0);
                    if dy != 0.0 {
                        text.newline()
                    } else {
                        text.space()
                    }
                }
                "T*" => text.newline(),
                "Tm" => {
                    let y = args.get(5).and_then(|y| y.as_float().ok());
                    if y.is_some() && line_y.is_some() && y != line_y {
                        text.newline();
                    } else {
                        text.space();
                    }
                    line_y = y;
                }
                "BT" | "ET" => text.space(),
                "Do" => {
                    let name = args.first().and_then(|a| a.as_name().ok());
                    if let Some(name) = name {
                        self.form(name, resources, depth, forms, text)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Draws the form XObject `name`, if it is one: forms carry the text of headers,
    /// footers and pages imported from other documents.
    fn form(
        &mut self,
        name: &[u8],
        resources: Option<&'d Dictionary>,
        depth: usize,
        forms: &mut Vec<ObjectId>,
        text: &mut Text,
    ) -> Result<(), PdfError> {
        let Some(id) = self.resource_ref(resources, b"XObject", name) else {
            return Ok(());
        };
        // A form that draws itself, directly or through others, is drawn once.
        if forms.contains(&id) {
            return Ok(());
        }
        if depth >= self.limits.max_depth {
            return Err(PdfError::TooLarge(format!(
                "forms nest deeper than {}",
                self.limits.max_depth
            )));
        }
        let Ok(Object::Stream(stream)) = self.doc.get_object(id) else {
            return Ok(());
        };
        if stream.dict.get(b"Subtype").and_then(Object::as_name).ok() != Some(b"Form") {
            return Ok(());
        }
        let own = stream
            .dict
            .get(b"Resources")
            .ok()
            .and_then(|r| self.doc.dereference(r).ok())
            .and_then(|(_, r)| r.as_dict().ok());
        let data = self.inflate(stream)?;
        forms.push(id);
        let drawn = self.draw(&data, own.or(resources), depth + 1, forms, text);
        forms.pop();
        drawn
    }

    /// The object a resource category (`/Font`, `/XObject`) names `name`.
    fn resource_ref(
        &self,
        resources: Option<&'d Dictionary>,
        category: &[u8],
        name: &[u8],
    ) -> Option<ObjectId> {
        let (_, dict) = self.doc.dereference(resources?.get(category).ok()?).ok()?;
        dict.as_dict().ok()?.get(name).ok()?.as_reference().ok()
    }

    fn font_id(&mut self, resources: Option<&'d Dictionary>, name: &[u8]) -> Option<ObjectId> {
        let id = self.resource_ref(resources, b"Font", name)?;
        if !self.fonts.contains_key(&id) {
            let encoding = self.encoding(id);
            self.fonts.insert(id, encoding);
        }
        Some(id)
    }

    /// The decoder of a font: its `ToUnicode` map when it has one (the map exists to say
    /// what the glyphs mean, so it wins over `/Encoding`), else its encoding as lopdf reads
    /// it (standard, WinAnsi, MacRoman, differences).
    fn encoding(&mut self, id: ObjectId) -> Option<Encoding<'d>> {
        let font = self.doc.get_dictionary(id).ok()?;
        if let Ok((_, Object::Stream(cmap))) =
            font.get(b"ToUnicode").and_then(|o| self.doc.dereference(o))
        {
            // Inflated through our bounds; a map over them is skipped, not fatal.
            if let Ok(plain) = self.inflate(cmap)
                && let Some(map) = to_unicode(plain)
            {
                return Some(map);
            }
        }
        font.get_font_encoding_with_limit(self.doc, self.limits.max_stream_bytes)
            .ok()
    }

    /// Appends the text of one string operand.
    fn show(&self, font: Option<ObjectId>, string: Option<&Object>, text: &mut Text) {
        let Some(Ok(bytes)) = string.map(Object::as_str) else {
            return;
        };
        let encoding = font
            .and_then(|id| self.fonts.get(&id))
            .and_then(Option::as_ref);
        let mut decoded = String::with_capacity(bytes.len());
        let ok = encoding.is_some_and(|e| e.write_to_string(bytes, &mut decoded).is_ok());
        if !ok {
            // No usable font: most such text is WinAnsi.
            decoded.clear();
            let _ =
                Encoding::SimpleEncoding(b"WinAnsiEncoding").write_to_string(bytes, &mut decoded);
        }
        text.push(&decoded);
    }
}

/// A `ToUnicode` map from its inflated bytes, parsed by lopdf through a font dictionary made
/// for it (lopdf parses maps only for fonts). The map is owned, so it outlives that font.
fn to_unicode<'a>(plain: Vec<u8>) -> Option<Encoding<'a>> {
    let mut font = Dictionary::new();
    font.set("Type", Object::Name(b"Font".to_vec()));
    font.set(
        "ToUnicode",
        Object::Stream(Stream::new(Dictionary::new(), plain)),
    );
    match font.get_font_encoding(&Document::new()) {
        Ok(Encoding::UnicodeMapEncoding(map)) => Some(Encoding::UnicodeMapEncoding(map)),
        _ => None,
    }
}

/// One page's text, with the whitespace the drawing implies and no runs of it.
#[derive(Default)]
struct Text(String);

impl Text {
    fn push(&mut self, s: &str) {
        for c in s.chars() {
            match c {
                '\n' | '\r' => self.newline(),
                c if c.is_whitespace() || c.is_control() => self.space(),
                c => self.0.push(c),
            }
        }
    }

    fn space(&mut self) {
        if !self.0.is_empty() && !self.0.ends_with([' ', '\n']) {
            self.0.push(' ');
        }
    }

    fn newline(&mut self) {
        if self.0.ends_with(' ') {
            self.0.pop();
        }
        if !self.0.is_empty() && !self.0.ends_with('\n') {
            self.0.push('\n');
        }
    }

    fn finish(mut self) -> String {
        let end = self.0.trim_end().len();
        self.0.truncate(end);
        self.0
    }
}
