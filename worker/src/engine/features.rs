//! Frozen-body features for head training (`model.cache_features`): the
//! body's output for every sentence of a run's splits, computed once in a
//! canonical order (all distinct sentences, sorted) so that a sentence's
//! features do not depend on which split or batch it falls in, and kept for
//! the next run of the same model and sentences in this process (a sweep's
//! runs differ in seeds and splits, not in sentences).

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{Device, Result, Tensor};

use super::models::Model;
use super::train::{cache_features, Encoded};

/// The last computed set: (key, features by token ids).
type Cache = Option<(String, HashMap<Vec<u32>, Tensor>)>;

static CACHE: Mutex<Cache> = Mutex::new(None);

/// Fills `features` of every set from the body of `model`. `model_key`
/// names the body (weights, precision, length limit, device): features are
/// reused only under the same key and the same sentences.
pub fn attach(
    model: &Model,
    model_key: &str,
    sets: &mut [&mut Encoded],
    batch_size: usize,
    device: &Device,
) -> Result<()> {
    let mut all: Vec<Vec<u32>> = sets.iter().flat_map(|s| s.ids.iter().cloned()).collect();
    all.sort();
    all.dedup();
    let key = format!("{model_key}|{device:?}|{}", digest(&all));
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if cache.as_ref().map(|(k, _)| k) != Some(&key) {
        let mut canonical = Encoded {
            labels: vec![0; all.len()],
            ids: all,
            features: None,
        };
        cache_features(model, &mut canonical, batch_size, device)?;
        let f = canonical
            .features
            .take()
            .expect("features were just computed");
        let mut map = HashMap::with_capacity(canonical.ids.len());
        for (i, ids) in canonical.ids.into_iter().enumerate() {
            map.insert(ids, f.get(i)?);
        }
        *cache = Some((key, map));
    }
    let (_, map) = cache.as_ref().expect("filled above");
    for set in sets.iter_mut() {
        let rows: Vec<Tensor> = set.ids.iter().map(|ids| map[ids].clone()).collect();
        set.features = Some(Tensor::stack(&rows, 0)?);
    }
    Ok(())
}

/// A short fingerprint of the sentence set.
fn digest(all: &[Vec<u32>]) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    all.hash(&mut h);
    format!("{}:{:016x}", all.len(), h.finish())
}
