//! Word and term statistics of extracted text, and its language.
//!
//! A word is a run of letters and digits, with apostrophes inside it (`don't` is one word);
//! everything else separates words. Terms are words lowercased, without stop words, one
//! letter words and numbers, so the top terms say what a document is about. Counts do not
//! depend on how the extractor spaced the text: `characters` counts non-whitespace
//! characters only.

use std::collections::HashMap;

/// Figures of one document's text.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Stats {
    /// Pages read.
    pub pages: usize,
    /// Characters other than whitespace.
    pub characters: usize,
    /// Words, as the module documentation defines them.
    pub words: usize,
    /// The most frequent terms, most frequent first, ties in alphabetical order.
    pub top_terms: Vec<Term>,
    /// The language of the text, `None` when there is too little text to tell.
    pub language: Option<Language>,
}

/// A term and how often it occurs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Term {
    /// The lowercased word.
    pub term: String,
    /// Occurrences in the document.
    pub count: u64,
}

/// A detected language.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Language {
    /// ISO 639-3 code, e.g. `eng`.
    pub code: String,
    /// English name, e.g. `English`.
    pub name: String,
    /// From 0 to 1, as the detector reports it.
    pub confidence: f64,
}

/// Text given to language detection, at most: the detector's answer settles long before
/// this, and its cost grows with the text.
const LANGUAGE_SAMPLE_BYTES: usize = 16 * 1024;
/// Fewer letters than this and the language is not guessed: trigram statistics on a line
/// or two are noise.
const LANGUAGE_MIN_LETTERS: usize = 40;

/// Statistics of a document's pages; at most `top` terms.
pub fn stats(pages: &[String], top: usize) -> Stats {
    let language = detect_language(pages);
    let english = language.as_ref().is_some_and(|l| l.code == "eng");
    let mut characters = 0;
    let mut words = 0;
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut lower = String::new();
    for page in pages {
        characters += page.chars().filter(|c| !c.is_whitespace()).count();
        for word in split_words(page) {
            words += 1;
            lower.clear();
            lower.extend(word.chars().flat_map(char::to_lowercase));
            if lower.chars().count() < 2
                || lower.chars().all(|c| c.is_numeric())
                || (english && ENGLISH_STOP_WORDS.binary_search(&lower.as_str()).is_ok())
            {
                continue;
            }
            match counts.get_mut(lower.as_str()) {
                Some(count) => *count += 1,
                None => {
                    counts.insert(lower.clone(), 1);
                }
            }
        }
    }
    let mut top_terms: Vec<Term> = counts
        .into_iter()
        .map(|(term, count)| Term { term, count })
        .collect();
    top_terms.sort_unstable_by(|a, b| b.count.cmp(&a.count).then_with(|| a.term.cmp(&b.term)));
    top_terms.truncate(top);
    Stats {
        pages: pages.len(),
        characters,
        words,
        top_terms,
        language,
    }
}

/// The words of `text`: runs of letters and digits, joined across single apostrophes.
fn split_words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '\u{2019}'))
        .map(|w| w.trim_matches(|c| c == '\'' || c == '\u{2019}'))
        .filter(|w| !w.is_empty())
}

/// The language of the first [`LANGUAGE_SAMPLE_BYTES`] of text, when there are enough
/// letters to tell.
fn detect_language(pages: &[String]) -> Option<Language> {
    let mut sample = String::with_capacity(LANGUAGE_SAMPLE_BYTES);
    for page in pages {
        let room = LANGUAGE_SAMPLE_BYTES - sample.len();
        if room == 0 {
            break;
        }
        let mut end = page.len().min(room);
        while !page.is_char_boundary(end) {
            end -= 1;
        }
        sample.push_str(&page[..end]);
        if sample.len() < LANGUAGE_SAMPLE_BYTES {
            sample.push('\n');
        }
    }
    if sample.chars().filter(|c| c.is_alphabetic()).count() < LANGUAGE_MIN_LETTERS {
        return None;
    }
    let info = whatlang::detect(&sample)?;
    Some(Language {
        code: info.lang().code().to_owned(),
        name: info.lang().eng_name().to_owned(),
        confidence: info.confidence(),
    })
}

/// Common English function words, sorted for binary search.
const ENGLISH_STOP_WORDS: &[&str] = &[
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "also",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "could",
    "did",
    "do",
    "does",
    "doing",
    "don't",
    "down",
    "during",
    "each",
    "few",
    "for",
    "from",
    "further",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "if",
    "in",
    "into",
    "is",
    "it",
    "it's",
    "its",
    "itself",
    "just",
    "may",
    "me",
    "might",
    "more",
    "most",
    "must",
    "my",
    "myself",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "on",
    "once",
    "only",
    "or",
    "other",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "same",
    "shall",
    "she",
    "should",
    "so",
    "some",
    "such",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "upon",
    "very",
    "was",
    "we",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "would",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn pages(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| (*t).to_owned()).collect()
    }

    #[test]
    fn stop_words_are_sorted_for_binary_search() {
        assert!(ENGLISH_STOP_WORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn counts_words_characters_and_terms_of_known_text() {
        let text = pages(&[
            "The river runs past the old mill. The river is cold in winter, \
             and the mill wheel turns slowly all through the long winter night.",
            "In spring the river rises; children don't swim in the river until summer. \
             The mill stands by the river as it has for 200 years.",
        ]);
        let s = stats(&text, 4);
        assert_eq!(s.pages, 2);
        assert_eq!(s.words, 25 + 25);
        let non_space: usize = text
            .iter()
            .map(|p| p.chars().filter(|c| !c.is_whitespace()).count())
            .sum();
        assert_eq!(s.characters, non_space);
        let top: Vec<(&str, u64)> = s
            .top_terms
            .iter()
            .map(|t| (t.term.as_str(), t.count))
            .collect();
        // Stop words ("the", "in") and numbers ("200") are not terms; of the sixteen terms
        // seen once, "children" comes first alphabetically.
        assert_eq!(
            top,
            [("river", 5), ("mill", 3), ("winter", 2), ("children", 1)]
        );
        let language = s.language.expect("enough English to tell");
        assert_eq!(language.code, "eng");
        assert_eq!(language.name, "English");
        assert!(language.confidence > 0.0 && language.confidence <= 1.0);
    }

    #[test]
    fn ties_are_alphabetical_and_top_bounds_the_list() {
        let s = stats(&pages(&["pear apple fig", "fig apple pear"]), 2);
        let terms: Vec<&str> = s.top_terms.iter().map(|t| t.term.as_str()).collect();
        assert_eq!(terms, ["apple", "fig"]);
        assert!(s.top_terms.iter().all(|t| t.count == 2));
        assert_eq!(stats(&pages(&["pear"]), 0).top_terms, []);
    }

    #[test]
    fn little_text_has_no_language_and_empty_text_counts_nothing() {
        let s = stats(&pages(&["Hello there."]), 10);
        assert_eq!(s.language, None);
        assert_eq!(s.words, 2);
        let empty = stats(&[], 10);
        assert_eq!(
            empty,
            Stats {
                pages: 0,
                characters: 0,
                words: 0,
                top_terms: vec![],
                language: None
            }
        );
    }

    #[test]
    fn other_languages_are_detected_and_keep_their_words() {
        let s = stats(
            &pages(&[
                "Der Fluss fließt langsam durch das alte Dorf, und die Kinder spielen \
                      jeden Abend am Ufer, bis die Sonne hinter den Bergen verschwindet.",
            ]),
            50,
        );
        assert_eq!(s.language.map(|l| l.code).as_deref(), Some("deu"));
        // Not English: no stop words are removed, "und" stays.
        assert!(s.top_terms.iter().any(|t| t.term == "und"));
        assert!(s.top_terms.iter().any(|t| t.term == "fließt"));
    }
}
