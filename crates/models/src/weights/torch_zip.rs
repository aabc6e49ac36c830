//! `torch.save` files (`pytorch_model.bin`, fairseq `.pt` checkpoints), read without executing
//! anything (see `pickle`).
//!
//! Since torch 1.6 these are uncompressed zip archives: `ROOT/data.pkl` is a pickle describing
//! the object, and `ROOT/data/KEY` holds the raw bytes of each storage. Older files (torch's
//! legacy format, e.g. the first wav2vec 2.0 releases) are a sequence of pickles followed by the
//! storages' bytes. Either way, tensors are located in the file, never copied here.

use std::collections::HashMap;
use std::io::{Cursor, Read};

use zip::ZipArchive;

use super::DType;
use super::pickle::{Id, Pickle, Unpickler, Value};

/// One tensor of the state dict: where its elements are in the checkpoint file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
    /// Byte offset of element 0 in the whole file.
    pub offset: usize,
}

/// A `torch.save` file unpickled: the object graph and where each storage's bytes are.
pub struct TorchFile {
    pub pickle: Pickle,
    /// Storage key → (byte offset in the file, byte length).
    storages: HashMap<String, (usize, usize)>,
}

/// Unpickle a `torch.save` file: a zip archive (torch ≥ 1.6) or the legacy format.
pub fn read(bytes: &[u8]) -> Result<TorchFile, String> {
    if bytes.starts_with(b"PK\x03\x04") {
        read_zip(bytes)
    } else if bytes.starts_with(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19") {
        read_legacy(bytes)
    } else {
        Err("neither a torch.save zip archive nor torch's legacy format (a bare pickle is not a checkpoint)".into())
    }
}

fn read_zip(bytes: &[u8]) -> Result<TorchFile, String> {
    let mut zip = ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("reading the zip directory: {e}"))?;
    // Members by their path below the archive's root folder (whose name varies).
    let mut members: HashMap<String, (usize, usize, bool)> = HashMap::new();
    let mut pickle_member = String::new();
    for i in 0..zip.len() {
        let f = zip.by_index_raw(i).map_err(|e| format!("zip member {i}: {e}"))?;
        let name = f.name().map_err(|e| format!("zip member {i}: {e}"))?.to_string();
        let rest = name.split_once('/').map(|(_, r)| r.to_string()).unwrap_or(name.clone());
        if rest == "data.pkl" {
            pickle_member = name;
        }
        let start = f.data_start().ok_or_else(|| format!("zip member {rest}: unknown data offset"))? as usize;
        let stored = f.compression() == zip::CompressionMethod::Stored;
        let size = usize::try_from(f.size()).map_err(|_| format!("zip member {rest}: size too large"))?;
        if start.checked_add(size).is_none_or(|end| end > bytes.len()) {
            return Err(format!("zip member {rest} runs past the end of the file"));
        }
        members.insert(rest, (start, size, stored));
    }
    let &(start, size, stored) = members.get("data.pkl").ok_or("no data.pkl in the archive")?;
    let data = if stored {
        bytes[start..start + size].to_vec()
    } else {
        let f = zip.by_name(&pickle_member).map_err(|e| format!("data.pkl: {e}"))?;
        let mut v = Vec::new();
        // The inflated size is bounded by what a real pickle needs, not by the header's claim.
        f.take(1 << 30).read_to_end(&mut v).map_err(|e| format!("data.pkl: {e}"))?;
        v
    };
    let pickle = Unpickler::new(&data, 0).load()?;
    let mut storages = HashMap::new();
    for key in pickle.storages.keys() {
        let &(start, size, stored) =
            members.get(&format!("data/{key}")).ok_or_else(|| format!("storage data/{key} missing"))?;
        if !stored {
            return Err(format!("storage data/{key} is compressed, torch never writes that"));
        }
        storages.insert(key.clone(), (start, size));
    }
    Ok(TorchFile { pickle, storages })
}

/// torch < 1.6: pickles of the magic number, the protocol version and system information, the
/// object, the list of storage keys; then each storage as an 8-byte element count and its bytes.
fn read_legacy(bytes: &[u8]) -> Result<TorchFile, String> {
    let mut pos = 0;
    for what in ["magic number", "protocol version", "system information"] {
        pos = Unpickler::new(bytes, pos).load().map_err(|e| format!("legacy header ({what}): {e}"))?.end;
    }
    let pickle = Unpickler::new(bytes, pos).load()?;
    let keys = Unpickler::new(bytes, pickle.end).load().map_err(|e| format!("legacy storage list: {e}"))?;
    let Value::List(ids) = keys.get(keys.root) else { return Err("legacy storage list is not a list".into()) };
    let mut pos = keys.end;
    let mut storages = HashMap::new();
    for &id in ids {
        let Value::Str(key) = keys.get(id) else { return Err("legacy storage key is not a string".into()) };
        let &(_, elem_size) =
            pickle.storages.get(key).ok_or_else(|| format!("legacy storage {key} is not used by the object"))?;
        let count = bytes.get(pos..pos + 8).ok_or_else(|| format!("legacy storage {key}: truncated"))?;
        let count = u64::from_le_bytes(count.try_into().expect("8 bytes"));
        let size = usize::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(elem_size))
            .filter(|&n| n <= bytes.len() - pos - 8)
            .ok_or_else(|| format!("legacy storage {key} claims {count} elements, past the end of the file"))?;
        storages.insert(key.clone(), (pos + 8, size));
        pos += 8 + size;
    }
    Ok(TorchFile { pickle, storages })
}

impl TorchFile {
    /// The tensors of the dict at `id` (non-tensor entries skipped), located in the file and
    /// checked to lie within their storage.
    pub fn tensors(&self, id: Id) -> Result<Vec<TensorRef>, String> {
        let Value::Dict(items) = self.pickle.get(id) else { return Err("not a dict of tensors".into()) };
        let mut out = Vec::new();
        for &(k, v) in items {
            let Value::Str(name) = self.pickle.get(k) else { return Err("state dict key is not a string".into()) };
            let Value::Tensor { dtype, key, offset, shape, strides } = self.pickle.get(v) else {
                continue; // non-tensor entries (e.g. data2vec's `_ema`) carry no weights
            };
            let &(start, size) =
                self.storages.get(key).ok_or_else(|| format!("tensor \"{name}\": storage {key} missing"))?;
            if shape.len() != strides.len() {
                return Err(format!("tensor \"{name}\": {} sizes but {} strides", shape.len(), strides.len()));
            }
            let elem = self.pickle.storages.get(key).map_or(1, |s| s.1);
            // The last element's index, computed without overflow: a header can claim anything.
            let extent = shape.iter().zip(strides).try_fold(*offset, |acc, (&d, &s)| {
                d.checked_sub(1).map_or(Some(acc), |d1| d1.checked_mul(s).and_then(|x| x.checked_add(acc)))
            });
            let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let needed = extent.and_then(|e| e.checked_add(1)).and_then(|e| e.checked_mul(elem));
            // Every element must have its own bytes in the file: a broadcast view (stride 0)
            // of a 4-byte storage could otherwise claim a 100-GB tensor.
            let bytes = numel.and_then(|n| n.checked_mul(elem));
            if bytes.is_none_or(|b| b > size) {
                return Err(format!(
                    "tensor \"{name}\" of shape {shape:?} claims more bytes than its storage holds ({size}); \
                     re-save it with .contiguous()"
                ));
            }
            match (numel, needed) {
                (Some(0), _) => {}
                (Some(_), Some(n)) if n <= size => {}
                _ => {
                    return Err(format!(
                        "tensor \"{name}\" of shape {shape:?} does not fit in its storage ({size} bytes)"
                    ));
                }
            }
            let offset = offset.checked_mul(elem).and_then(|o| o.checked_add(start)).unwrap_or(usize::MAX);
            out.push(TensorRef {
                name: name.clone(),
                dtype: *dtype,
                shape: shape.clone(),
                strides: strides.clone(),
                offset,
            });
        }
        Ok(out)
    }

    /// The state dict: the root when it holds tensors, else the first of its `state_dict` /
    /// `model` entries that does (searched a few levels deep).
    pub fn state_dict(&self) -> Result<Id, String> {
        let holds_tensors = |id: Id| match self.pickle.get(id) {
            Value::Dict(items) => items.iter().any(|(_, v)| matches!(self.pickle.get(*v), Value::Tensor { .. })),
            _ => false,
        };
        let mut at = self.pickle.root;
        for _ in 0..4 {
            if holds_tensors(at) {
                return Ok(at);
            }
            match self.pickle.lookup(at, "state_dict").or_else(|| self.pickle.lookup(at, "model")) {
                Some(next) => at = next,
                None => break,
            }
        }
        match self.pickle.get(self.pickle.root) {
            Value::Dict(_) => Err("the pickle holds no tensors".into()),
            _ => Err("the pickle does not hold a dict of tensors".into()),
        }
    }
}

/// List the tensors of a `torch.save` state dict (`pytorch_model.bin`).
pub fn read_index(bytes: &[u8]) -> Result<Vec<TensorRef>, String> {
    let file = read(bytes)?;
    file.tensors(file.state_dict()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-written protocol-2 pickle: OrderedDict({'w': tensor([2, 3]) at offset 1, strides (1, 2)}).
    fn tensor_pickle(global: &[u8]) -> Vec<u8> {
        let mut p = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00wq\x02".to_vec();
        p.extend_from_slice(global);
        p.extend_from_slice(b"q\x03((X\x07\x00\x00\x00storageq\x04ctorch\nFloatStorage\nq\x05X\x01\x00\x00\x000q\x06");
        p.extend_from_slice(b"X\x03\x00\x00\x00cpuq\x07K\x07tq\x08QK\x01K\x02K\x03\x86q\tK\x01K\x02\x86q\n\x89h\x00)Rq\x0btq\x0cRq\rs}b.");
        p
    }

    fn state_of(p: &[u8]) -> Result<(Pickle, Id), String> {
        let pk = Unpickler::new(p, 0).load()?;
        let file = TorchFile { pickle: pk, storages: HashMap::from([("0".to_string(), (100, 28))]) };
        let id = file.state_dict()?;
        Ok((file.pickle, id))
    }

    #[test]
    fn rebuilds_a_strided_tensor_reference() {
        let p = tensor_pickle(b"ctorch._utils\n_rebuild_tensor_v2\n");
        let (pk, id) = state_of(&p).unwrap();
        let Value::Dict(items) = pk.get(id) else { panic!("not a dict") };
        assert_eq!(items.len(), 1);
        match pk.get(items[0].1) {
            Value::Tensor { dtype, key, offset, shape, strides } => {
                assert_eq!((*dtype, key.as_str(), *offset), (DType::F32, "0", 1));
                assert_eq!((shape.as_slice(), strides.as_slice()), (&[2usize, 3][..], &[1usize, 2][..]));
            }
            other => panic!("expected a tensor, got {other:?}"),
        }
        // Located at storage start + offset * 4; its last element (1 + 1*1 + 2*2 = 6) fits in 7.
        let file = TorchFile { pickle: pk, storages: HashMap::from([("0".to_string(), (100, 28))]) };
        let t = file.tensors(id).unwrap();
        assert_eq!((t[0].name.as_str(), t[0].offset), ("w", 104));
        let small = TorchFile { storages: HashMap::from([("0".to_string(), (100, 24))]), ..file };
        assert!(small.tensors(id).unwrap_err().contains("does not fit"));
    }

    #[test]
    fn a_small_file_claiming_a_huge_tensor_is_refused_at_once() {
        // w: shape (10^11,), stride (0,) -- a broadcast view of one 4-byte element.
        let p = b"\x80\x02}q\x00X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage\
                  ctorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQK\x00\x8a\x05\x00\xe8\x76\x48\x17\x85K\x00\x85\
                  \x89}tRs.";
        let (pk, id) = state_of(p).unwrap();
        let file = TorchFile { pickle: pk, storages: HashMap::from([("0".to_string(), (100, 4))]) };
        let e = file.tensors(id).unwrap_err();
        assert!(e.contains("[100000000000]") && e.contains("claims more bytes"), "{e}");
    }

    #[test]
    fn refuses_to_call_anything_else() {
        let e = state_of(&tensor_pickle(b"cos\nsystem\n")).err().unwrap();
        assert!(e.contains("os.system") && e.contains("does not do"), "{e}");
    }

    #[test]
    fn bare_and_truncated_files_are_reported() {
        assert!(read_index(b"\x80\x02}q\x00.").err().unwrap().contains("bare pickle"));
        let e = Unpickler::new(b"\x80\x02}q\x00X\x05\x00", 0).load().err().unwrap();
        assert!(e.contains("truncated"), "{e}");
    }
}
