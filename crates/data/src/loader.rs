//! Decoding batches on worker threads, ahead of the training loop, in plan order.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};

use crate::batching::Batch;
use crate::error::{Error, Result};
use crate::item::{AudioSource, Utterance};

#[derive(Debug, Clone, PartialEq)]
pub struct LoaderOptions {
    /// Decoding threads.
    pub workers: usize,
    /// Batches decoded ahead of the consumer.
    pub prefetch: usize,
    /// Keep decoded audio in memory for later epochs.
    pub cache: bool,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        Self { workers: 2, prefetch: 4, cache: false }
    }
}

type Cache = Arc<Mutex<HashMap<usize, Arc<Vec<f32>>>>>;

/// Read, decode, resample to 16 kHz and cut one utterance.
pub fn load_audio(u: &Utterance) -> Result<Vec<f32>> {
    let decoded = match &u.audio {
        AudioSource::File(p) => speechtune_audio::decode_file(p)?,
        AudioSource::TarMember { shard, member, offset, size } => {
            let io = |source| Error::Io { path: shard.clone(), source };
            let mut f = std::fs::File::open(shard).map_err(io)?;
            // The size comes from a tar header: allocate only what the file really holds.
            let len = f.metadata().map_err(io)?.len();
            if offset.checked_add(*size).is_none_or(|end| end > len) {
                return Err(Error::Layout {
                    path: shard.clone(),
                    reason: format!(
                        "member {member} ({size} bytes at {offset}) runs past the end of the file ({len} bytes)"
                    ),
                });
            }
            f.seek(SeekFrom::Start(*offset)).map_err(io)?;
            let mut bytes = vec![0u8; *size as usize];
            f.read_exact(&mut bytes).map_err(io)?;
            speechtune_audio::decode_bytes(bytes, &shard.join(member))?
        }
    };
    let wave = speechtune_audio::resample(&decoded.samples, decoded.sample_rate, speechtune_audio::SAMPLE_RATE)?;
    let sr = speechtune_audio::SAMPLE_RATE as f64;
    let a = u.start.map(|s| (s * sr).round() as usize).unwrap_or(0).min(wave.len());
    let b = u.end.map(|e| (e * sr).round() as usize).unwrap_or(wave.len()).clamp(a, wave.len());
    if a == b {
        return Err(Error::Layout { path: u.audio.display_path(), reason: format!("segment of {} is empty", u.id) });
    }
    Ok(if a == 0 && b == wave.len() { wave } else { wave[a..b].to_vec() })
}

/// Iterates over decoded batches in the order of the plan while workers decode ahead.
pub struct Loader {
    rx: Receiver<(usize, Result<Batch>)>,
    pending: BTreeMap<usize, Result<Batch>>,
    next: usize,
    total: usize,
    counter: Arc<AtomicUsize>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Loader {
    pub fn new(utts: Arc<Vec<Utterance>>, plan: Vec<Vec<usize>>, opts: &LoaderOptions) -> Self {
        Self::with_cache(utts, plan, opts, Self::cache_handle())
    }

    /// Like `new`, sharing a cache across epochs (see [`Loader::cache_handle`]).
    pub fn with_cache(
        utts: Arc<Vec<Utterance>>,
        plan: Vec<Vec<usize>>,
        opts: &LoaderOptions,
        cache: CacheHandle,
    ) -> Self {
        let total = plan.len();
        let plan = Arc::new(plan);
        let counter = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = sync_channel(opts.prefetch.max(1));
        let use_cache = opts.cache;
        let workers = (0..opts.workers.max(1))
            .map(|_| {
                let (tx, plan, counter, utts, cache) =
                    (tx.clone(), plan.clone(), counter.clone(), utts.clone(), cache.clone());
                std::thread::spawn(move || {
                    loop {
                        let i = counter.fetch_add(1, Ordering::SeqCst);
                        if i >= plan.len() {
                            break;
                        }
                        let batch = build(&utts, &plan[i], use_cache.then_some(&cache));
                        if tx.send((i, batch)).is_err() {
                            break; // the consumer is gone
                        }
                    }
                })
            })
            .collect();
        Self { rx, pending: BTreeMap::new(), next: 0, total, counter, workers }
    }

    /// A new, empty cache to pass to [`Loader::with_cache`] epoch after epoch.
    pub fn cache_handle() -> CacheHandle {
        Arc::new(Mutex::new(HashMap::new()))
    }
}

/// Decoded audio kept across epochs, by utterance index.
pub type CacheHandle = Cache;

fn build(utts: &[Utterance], indices: &[usize], cache: Option<&Cache>) -> Result<Batch> {
    let mut waves = Vec::with_capacity(indices.len());
    for &i in indices {
        let cached = cache.and_then(|c| c.lock().ok().and_then(|m| m.get(&i).cloned()));
        let wave = match cached {
            Some(w) => w,
            None => {
                let w = Arc::new(load_audio(&utts[i])?);
                if let Some(mut m) = cache.and_then(|c| c.lock().ok()) {
                    m.insert(i, w.clone());
                }
                w
            }
        };
        waves.push(wave);
    }
    let pick = |f: fn(&Utterance) -> Option<String>| indices.iter().map(|&i| f(&utts[i])).collect();
    Ok(Batch {
        indices: indices.to_vec(),
        ids: indices.iter().map(|&i| utts[i].id.clone()).collect(),
        waves,
        texts: pick(|u| u.text.clone()),
        langs: pick(|u| u.lang.clone()),
        labels: pick(|u| u.label.clone()),
    })
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.total {
            return None;
        }
        while !self.pending.contains_key(&self.next) {
            match self.rx.recv() {
                Ok((i, b)) => {
                    self.pending.insert(i, b);
                }
                Err(_) => return None, // workers ended early (cannot happen while batches remain)
            }
        }
        let b = self.pending.remove(&self.next);
        self.next += 1;
        b
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // No new batches, then unblock workers waiting to send and let them finish.
        self.counter.store(usize::MAX / 2, Ordering::SeqCst);
        for w in self.workers.drain(..) {
            // A worker may be blocked sending a finished batch: keep receiving until it exits.
            while !w.is_finished() {
                let _ = self.rx.recv_timeout(std::time::Duration::from_millis(5));
            }
            let _ = w.join();
        }
    }
}
