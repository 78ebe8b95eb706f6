//! Financial PhraseBank v1.0: reading the original files (a directory or the
//! distribution zip), removing duplicates and conflicting labels, and a
//! seeded stratified split that is identical on every machine.
//! No tokenization and no network here.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use common::spec::{Agreement, SplitSpec};
use common::summary::LoadStats;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Class names in label order.
pub const LABELS: [&str; 3] = ["negative", "neutral", "positive"];

/// What is wrong with the data, naming the file and line.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("data file not found: {0}")]
    Missing(String),
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}:{line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{0}: no sentences (expected lines of `sentence@label`)")]
    Empty(String),
    #[error("{0}")]
    Split(String),
}

/// Sentences read from one file, and how its bytes were decoded.
#[derive(Debug, Clone)]
pub struct FileRead {
    pub examples: Vec<Example>,
    pub encoding: &'static str,
}

/// The text of a data file: UTF-8 when the bytes are valid UTF-8 (a
/// leading byte-order mark dropped), as editors and exports write it;
/// else latin-1, the original files' encoding, where every byte is the
/// code point of the same value.
pub fn decode(bytes: &[u8]) -> (String, &'static str) {
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match std::str::from_utf8(body) {
        Ok(text) => (text.to_string(), "utf-8"),
        Err(_) => (bytes.iter().map(|&b| b as char).collect(), "latin-1"),
    }
}

/// One labelled sentence.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Example {
    pub text: String,
    pub label: usize,
}

/// Parses the bytes of one `Sentences_*.txt` file (CRLF or LF,
/// `sentence@label`, split on the last `@`; decoded by [`decode`]). A file
/// without a single sentence is an error naming it.
pub fn parse(origin: &str, bytes: &[u8]) -> Result<FileRead, DataError> {
    let (text, encoding) = decode(bytes);
    let mut out = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| DataError::Line {
            path: origin.to_string(),
            line: i + 1,
            message,
        };
        let (sentence, label) = line
            .rsplit_once('@')
            .ok_or_else(|| err("expected `sentence@label`, found no '@'".into()))?;
        let label = match label.trim() {
            "negative" => 0,
            "neutral" => 1,
            "positive" => 2,
            other => {
                return Err(err(format!(
                    "unknown label {other:?} (expected negative, neutral or positive)"
                )))
            }
        };
        let sentence = sentence.trim();
        if sentence.is_empty() {
            return Err(err("empty sentence".into()));
        }
        out.push(Example {
            text: sentence.to_string(),
            label,
        });
    }
    if out.is_empty() {
        return Err(DataError::Empty(origin.to_string()));
    }
    Ok(FileRead {
        examples: out,
        encoding,
    })
}

/// Reads one agreement level from a directory holding the `Sentences_*.txt`
/// files, or from the original `FinancialPhraseBank-v1.0.zip`.
pub fn load(path: &Path, agreement: Agreement) -> Result<FileRead, DataError> {
    let name = agreement.file_name();
    if path.is_dir() {
        let file = path.join(&name);
        let bytes = std::fs::read(&file).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                DataError::Missing(file.display().to_string())
            } else {
                DataError::Read {
                    path: file.display().to_string(),
                    message: e.to_string(),
                }
            }
        })?;
        return parse(&file.display().to_string(), &bytes);
    }
    if !path.exists() {
        return Err(DataError::Missing(path.display().to_string()));
    }
    let read_err = |message: String| DataError::Read {
        path: path.display().to_string(),
        message,
    };
    let f = std::fs::File::open(path).map_err(|e| read_err(e.to_string()))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| read_err(format!("not a zip file: {e}")))?;
    let entry = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).map(|n| (i, n.to_string())))
        .find(|(_, n)| !n.starts_with("__MACOSX") && n.ends_with(name.as_str()))
        .ok_or_else(|| DataError::Missing(format!("{}!{name}", path.display())))?;
    let mut bytes = Vec::new();
    zip.by_index(entry.0)
        .map_err(|e| read_err(e.to_string()))?
        .read_to_end(&mut bytes)
        .map_err(|e| read_err(e.to_string()))?;
    parse(&format!("{}!{}", path.display(), entry.1), &bytes)
}

/// Drops exact duplicates (keeping one) and every sentence that carries more
/// than one label, then sorts by text so the result does not depend on file order.
pub fn dedupe(examples: Vec<Example>) -> (Vec<Example>, LoadStats) {
    let lines = examples.len();
    let mut labels: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for e in examples {
        labels.entry(e.text).or_default().push(e.label);
    }
    let mut stats = LoadStats {
        lines,
        ..Default::default()
    };
    let mut out = Vec::new();
    for (text, ls) in labels {
        let first = ls[0];
        if ls.iter().any(|&l| l != first) {
            stats.conflicting += 1;
            continue;
        }
        stats.exact_duplicates += ls.len() - 1;
        out.push(Example { text, label: first });
    }
    stats.unique = out.len();
    (out, stats)
}

/// Train, validation and test examples.
#[derive(Debug, Clone)]
pub struct Split {
    pub train: Vec<Example>,
    pub val: Vec<Example>,
    pub test: Vec<Example>,
}

/// Stratified split: each class is shuffled with the split seed and cut by
/// the fractions (validation and test sizes rounded, train takes the rest).
pub fn split(examples: &[Example], spec: &SplitSpec) -> Result<Split, DataError> {
    let mut by_class: HashMap<usize, Vec<&Example>> = HashMap::new();
    for e in examples {
        by_class.entry(e.label).or_default().push(e);
    }
    let mut out = Split {
        train: Vec::new(),
        val: Vec::new(),
        test: Vec::new(),
    };
    let mut classes: Vec<_> = by_class.keys().copied().collect();
    classes.sort();
    for c in classes {
        let mut items = by_class[&c].clone();
        items.sort();
        let mut rng =
            ChaCha8Rng::seed_from_u64(spec.seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        items.shuffle(&mut rng);
        let n = items.len();
        let n_val = (n as f64 * spec.val).round() as usize;
        let n_test = (n as f64 * spec.test).round() as usize;
        if n_val == 0 || n_test == 0 || n_val + n_test >= n {
            return Err(DataError::Split(format!(
                "class {} has {n} examples: too few for the split {}/{}/{}",
                LABELS.get(c).unwrap_or(&"?"),
                spec.train,
                spec.val,
                spec.test
            )));
        }
        out.test
            .extend(items[..n_test].iter().map(|e| (*e).clone()));
        out.val
            .extend(items[n_test..n_test + n_val].iter().map(|e| (*e).clone()));
        out.train
            .extend(items[n_test + n_val..].iter().map(|e| (*e).clone()));
    }
    Ok(out)
}

/// Number of examples per class.
pub fn class_counts(examples: &[Example], classes: usize) -> Vec<usize> {
    let mut c = vec![0; classes];
    for e in examples {
        c[e.label] += 1;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_latin1_crlf_last_at() {
        let bytes = b"Caf\xe9 sales @ record@positive\r\nFlat.@neutral\r\n\r\n";
        let read = parse("f.txt", bytes).unwrap();
        assert_eq!(read.encoding, "latin-1");
        let ex = read.examples;
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].text, "Caf\u{e9} sales @ record");
        assert_eq!(ex[0].label, 2);
        assert_eq!(ex[1].label, 1);
    }

    /// The same sentence written as UTF-8 (with or without a byte-order
    /// mark) reads as the same text, not mojibake.
    #[test]
    fn utf8_files_are_decoded_as_utf8() {
        for bytes in [
            &b"Caf\xc3\xa9 sales @ record@positive\n"[..],
            &b"\xef\xbb\xbfCaf\xc3\xa9 sales @ record@positive\r\n"[..],
        ] {
            let read = parse("f.txt", bytes).unwrap();
            assert_eq!(read.encoding, "utf-8");
            assert_eq!(read.examples[0].text, "Caf\u{e9} sales @ record");
        }
    }

    #[test]
    fn a_file_without_sentences_is_an_error_naming_it() {
        for bytes in [&b""[..], &b"\r\n\r\n  \n"[..]] {
            let e = parse("data/Sentences_AllAgree.txt", bytes).unwrap_err();
            assert_eq!(
                e.to_string(),
                "data/Sentences_AllAgree.txt: no sentences (expected lines of `sentence@label`)"
            );
        }
    }

    #[test]
    fn garbled_line_names_file_and_line() {
        let e = parse("f.txt", b"ok@neutral\r\nbroken line\r\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "f.txt:2: expected `sentence@label`, found no '@'"
        );
        let e = parse("f.txt", b"ok@neutral\r\nx@happy\r\n").unwrap_err();
        assert!(e.to_string().starts_with("f.txt:2: unknown label"));
    }

    #[test]
    fn dedupe_drops_duplicates_and_conflicts() {
        let ex = |t: &str, l| Example {
            text: t.into(),
            label: l,
        };
        let (out, st) = dedupe(vec![
            ex("a", 0),
            ex("a", 0),
            ex("b", 1),
            ex("b", 2),
            ex("c", 2),
        ]);
        assert_eq!(out, vec![ex("a", 0), ex("c", 2)]);
        assert_eq!(st.exact_duplicates, 1);
        assert_eq!(st.conflicting, 1);
    }

    #[test]
    fn split_is_stratified_disjoint_and_seeded() {
        let ex: Vec<Example> = (0..300)
            .map(|i| Example {
                text: format!("s{i}"),
                label: i % 3,
            })
            .collect();
        let spec = SplitSpec::default();
        let a = split(&ex, &spec).unwrap();
        let b = split(&ex, &spec).unwrap();
        assert_eq!(a.test, b.test);
        assert_eq!((a.train.len(), a.val.len(), a.test.len()), (210, 45, 45));
        assert_eq!(class_counts(&a.test, 3), vec![15, 15, 15]);
        let mut all: Vec<_> = a
            .train
            .iter()
            .chain(&a.val)
            .chain(&a.test)
            .map(|e| &e.text)
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 300);
        let c = split(&ex, &SplitSpec { seed: 1, ..spec }).unwrap();
        assert_ne!(a.test, c.test);
    }
}
