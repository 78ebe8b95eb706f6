//! Tokenization with a Hugging Face `tokenizer.json`: padding baked into the
//! file is switched off (batches are padded by
//! [`crate::engine::models::Batch`]) and sentences are truncated to
//! `max_len` by the tokenizer's own truncation, as `transformers` does with
//! `truncation=True, max_length=max_len`: the sentence is cut at the end,
//! then the special tokens are added (BERT keeps `[SEP]` last; a
//! byte-level tokenizer such as Phi's, which adds none, keeps the first
//! `max_len` tokens).

use std::path::Path;

/// Tokenizer failures, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("cannot load tokenizer {path}: {message}")]
    Load { path: String, message: String },
    #[error("cannot tokenize: {0}")]
    Encode(String),
}

/// A tokenizer with a length cap.
pub struct Tok {
    inner: tokenizers::Tokenizer,
}

impl Tok {
    pub fn load(path: &Path, max_len: usize) -> Result<Tok, TokenizeError> {
        let load_err = |e: tokenizers::Error| TokenizeError::Load {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let inner = tokenizers::Tokenizer::from_file(path).map_err(load_err)?;
        Tok::new(inner, max_len).map_err(load_err)
    }

    /// Wraps a tokenizer: no padding, right truncation to `max_len` tokens
    /// special tokens included.
    pub fn new(mut inner: tokenizers::Tokenizer, max_len: usize) -> tokenizers::Result<Tok> {
        inner.with_padding(None);
        inner.with_truncation(Some(tokenizers::TruncationParams {
            max_length: max_len,
            strategy: tokenizers::TruncationStrategy::LongestFirst,
            direction: tokenizers::TruncationDirection::Right,
            stride: 0,
        }))?;
        Ok(Tok { inner })
    }

    /// Token ids of each sentence, with the model's special tokens, at most `max_len` long.
    pub fn encode_all(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, TokenizeError> {
        let enc = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| TokenizeError::Encode(e.to_string()))?;
        Ok(enc.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// The id of a token string, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    use tokenizers::processors::byte_level::ByteLevel;
    use tokenizers::processors::template::TemplateProcessing;

    fn word_level() -> tokenizers::Tokenizer {
        let words = [
            "[UNK]", "[CLS]", "[SEP]", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j",
        ];
        let vocab: HashMap<String, u32> = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.to_string(), i as u32))
            .collect();
        let model = WordLevel::builder()
            .vocab(vocab.into_iter().collect())
            .unk_token("[UNK]".into())
            .build()
            .unwrap();
        let mut t = tokenizers::Tokenizer::new(model);
        t.with_pre_tokenizer(Some(Whitespace {}));
        t
    }

    const TEXT: &str = "a b c d e f g h i j";

    /// A byte-level post-processor (Phi, GPT-2) adds no tokens: the first
    /// `max_len` tokens are kept, as in `transformers`.
    #[test]
    fn byte_level_keeps_the_first_tokens() {
        let mut t = word_level();
        t.with_post_processor(Some(ByteLevel::default()));
        let tok = Tok::new(t, 8).unwrap();
        let ids = tok.encode_all(&[TEXT, "a b"]).unwrap();
        assert_eq!(ids[0], vec![3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(ids[1], vec![3, 4]);
    }

    /// BERT's template: the sentence is cut, then `[CLS]`/`[SEP]` added.
    #[test]
    fn bert_template_keeps_sep_last() {
        let mut t = word_level();
        let template = TemplateProcessing::builder()
            .try_single("[CLS] $A [SEP]")
            .unwrap()
            .special_tokens(vec![("[CLS]", 1), ("[SEP]", 2)])
            .build()
            .unwrap();
        t.with_post_processor(Some(template));
        let tok = Tok::new(t, 8).unwrap();
        let ids = tok.encode_all(&[TEXT]).unwrap();
        assert_eq!(ids[0], vec![1, 3, 4, 5, 6, 7, 8, 2]);
    }
}
