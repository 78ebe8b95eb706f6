//! Tokenization with a Hugging Face `tokenizer.json`: any padding or
//! truncation baked into the file is switched off; sentences are truncated
//! to `max_len` here and padded per batch by [`crate::engine::models::Batch`].

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
    max_len: usize,
    /// Keep the end of a truncated sequence (the special token a
    /// classifier reads) by re-appending the last token.
    keep_last: bool,
}

impl Tok {
    pub fn load(path: &Path, max_len: usize) -> Result<Tok, TokenizeError> {
        let mut inner =
            tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizeError::Load {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| TokenizeError::Load {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        let keep_last = inner.get_post_processor().is_some();
        Ok(Tok {
            inner,
            max_len,
            keep_last,
        })
    }

    /// Token ids of each sentence, with the model's special tokens, at most `max_len` long.
    pub fn encode_all(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, TokenizeError> {
        let enc = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| TokenizeError::Encode(e.to_string()))?;
        Ok(enc
            .into_iter()
            .map(|e| {
                let ids = e.get_ids();
                if ids.len() <= self.max_len {
                    ids.to_vec()
                } else if self.keep_last {
                    let mut v = ids[..self.max_len - 1].to_vec();
                    v.push(ids[ids.len() - 1]);
                    v
                } else {
                    ids[..self.max_len].to_vec()
                }
            })
            .collect())
    }

    /// The id of a token string, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}
