//! Extraction from the generated documents: text round-trips, statistics of a generated
//! document, every hostile sample refused with the right error, progress and cancelling.
//! (Declared in `sample.rs`, beside the documents it reads, which leaves the name `tests`
//! free in the module itself.)

use std::io::Read;

use crate::pdf::extract::{Limits, PdfError, extract, is_pdf};
use crate::pdf::sample;
use crate::pdf::stats::stats;

fn run(bytes: &[u8]) -> Result<Vec<String>, PdfError> {
    extract(bytes, &Limits::default(), &mut |_, _| true)
}

#[test]
fn the_words_written_come_back_in_order() {
    let (pages, words, seed) = (12, 150, 9);
    let text = run(&sample::text_pdf(pages, words, seed)).expect("a valid document");
    let expected = sample::text_pdf_words(pages, words, seed);
    assert_eq!(text.len(), pages);
    for (page, (got, want)) in text.iter().zip(&expected).enumerate() {
        let got: Vec<&str> = got.split_whitespace().collect();
        assert_eq!(&got, want, "page {page}");
    }
    // Twelve words a line: every line is a line of its own.
    assert_eq!(text[0].lines().count(), words / 12 + 1);
}

#[test]
fn a_generated_document_reads_as_english_with_its_word_count() {
    let text = run(&sample::text_pdf(30, 300, 2)).expect("a valid document");
    let s = stats(&text, 5);
    assert_eq!(s.pages, 30);
    assert_eq!(s.words, 30 * 300);
    assert_eq!(s.language.as_ref().map(|l| l.code.as_str()), Some("eng"));
    assert_eq!(s.top_terms.len(), 5);
    assert!(s.top_terms.windows(2).all(|t| t[0].count >= t[1].count));
    assert!(
        !s.top_terms.iter().any(|t| t.term == "the"),
        "stop word kept"
    );
}

#[test]
fn fonts_tounicode_maps_and_forms_are_decoded() {
    let text = run(&sample::fonts_and_forms()).expect("a valid document");
    assert_eq!(text, ["café\nHi\nfooter"]);
}

#[test]
fn progress_is_reported_after_every_page() {
    let mut calls = Vec::new();
    let text = extract(
        &sample::text_pdf(4, 20, 1),
        &Limits::default(),
        &mut |done, total| {
            calls.push((done, total));
            true
        },
    )
    .expect("a valid document");
    assert_eq!(text.len(), 4);
    assert_eq!(calls, [(1, 4), (2, 4), (3, 4), (4, 4)]);
}

#[test]
fn a_callback_that_says_stop_stops() {
    let mut pages_seen = 0;
    let result = extract(
        &sample::text_pdf(10, 20, 1),
        &Limits::default(),
        &mut |done, _| {
            pages_seen = done;
            done < 3
        },
    );
    assert!(matches!(result, Err(PdfError::Stopped)), "{result:?}");
    assert_eq!(pages_seen, 3);
}

#[test]
#[should_panic(expected = "the caller's own panic")]
fn a_panic_in_the_callback_is_not_reported_as_a_damaged_file() {
    let _ = extract(
        &sample::text_pdf(2, 5, 1),
        &Limits::default(),
        &mut |_, _| panic!("the caller's own panic"),
    );
}

#[test]
fn hostile_files_are_refused_with_the_right_error() {
    type Expected = fn(&PdfError) -> bool;
    let cases: [(&str, Vec<u8>, Expected); 8] = [
        ("encrypted", sample::encrypted(), |e| {
            matches!(e, PdfError::Encrypted)
        }),
        ("truncated", sample::truncated(), |e| {
            matches!(e, PdfError::Corrupt(_))
        }),
        ("deep_nesting", sample::deep_nesting(), |e| {
            matches!(e, PdfError::Corrupt(_))
        }),
        ("flate_bomb", sample::flate_bomb(), |e| {
            matches!(e, PdfError::TooLarge(_))
        }),
        ("page_tree_cycle", sample::page_tree_cycle(), |e| {
            matches!(e, PdfError::Corrupt(_))
        }),
        ("content_cycle", sample::content_cycle(), |e| {
            matches!(e, PdfError::Corrupt(_))
        }),
        ("garbage", sample::garbage(), |e| {
            matches!(e, PdfError::Corrupt(_))
        }),
        ("not a pdf", b"PK\x03\x04 a zip file".to_vec(), |e| {
            matches!(e, PdfError::NotPdf)
        }),
    ];
    for (name, bytes, expected) in cases {
        match run(&bytes) {
            Err(e) if expected(&e) => {}
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn lies_about_sizes_cost_nothing() {
    // The stream's true end is found despite its /Length.
    assert_eq!(run(&sample::lying_length()).expect("readable"), ["length"]);
    // An absurd /Count is not trusted and a missing content stream draws nothing.
    assert_eq!(run(&sample::huge_sizes()).expect("readable"), [""]);
}

#[test]
fn each_limit_is_enforced_and_named() {
    let doc = sample::text_pdf(6, 100, 1);
    let limits = |f: fn(&mut Limits)| {
        let mut l = Limits::default();
        f(&mut l);
        l
    };
    let too_large = |limits: Limits| match extract(&doc, &limits, &mut |_, _| true) {
        Err(PdfError::TooLarge(why)) => why,
        other => panic!("{other:?}"),
    };
    assert!(too_large(limits(|l| l.max_pages = 5)).contains("more than 5 pages"));
    assert!(too_large(limits(|l| l.max_stream_bytes = 100)).contains("stream"));
    assert!(too_large(limits(|l| l.max_total_bytes = 2_000)).contains("document"));
    assert!(too_large(limits(|l| l.max_depth = 0)).contains("page tree"));
    // At the exact page count the document reads.
    let ok = extract(&doc, &limits(|l| l.max_pages = 6), &mut |_, _| true);
    assert_eq!(ok.map(|t| t.len()).ok(), Some(6));
}

#[test]
fn is_pdf_looks_for_the_header_in_the_first_kilobyte() {
    assert!(is_pdf(b"%PDF-1.7\n"));
    let mut late = vec![b' '; 1019];
    late.extend_from_slice(b"%PDF-1.4");
    assert!(is_pdf(&late));
    let mut too_late = vec![b' '; 1020];
    too_late.extend_from_slice(b"%PDF-1.4");
    assert!(!is_pdf(&too_late));
    assert!(!is_pdf(b""));
    assert!(!is_pdf(b"%PDF"));
    assert!(!is_pdf(b"%!PS-Adobe-3.0"));
}

#[test]
fn generated_documents_are_deterministic() {
    let a = sample::text_pdf(5, 40, 3);
    assert_eq!(a, sample::text_pdf(5, 40, 3));
    assert_ne!(a, sample::text_pdf(5, 40, 4));
    assert!(a.starts_with(b"%PDF-1.7") && a.ends_with(b"%%EOF\n"));
    let words = sample::text_pdf_words(5, 40, 3);
    assert!(words.len() == 5 && words.iter().all(|page| page.len() == 40));
}

#[test]
fn the_bomb_inflates_to_zeros_past_any_limit() {
    let bomb = sample::zeros_bomb(64 << 20);
    assert!(bomb.len() < 256 * 1024, "{} bytes", bomb.len());
    let mut inflated = Vec::new();
    let n = flate2::read::ZlibDecoder::new(&bomb[..])
        .take(3 << 20)
        .read_to_end(&mut inflated)
        .unwrap_or(0);
    assert_eq!(n, 3 << 20);
    assert!(inflated.iter().all(|&b| b == 0));
}
