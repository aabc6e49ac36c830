//! `torch.save` checkpoints (`pytorch_model.bin`), read without executing anything.
//!
//! Since torch 1.6 these are uncompressed zip archives: `ROOT/data.pkl` is a pickle describing
//! the state dict, and `ROOT/data/KEY` holds the raw bytes of each storage. Instead of Python's
//! unpickler, which calls whatever the file names, this is a small stack machine that knows only
//! the opcodes `torch.save` writes and builds values for an allow-list of names (the tensor
//! rebuild functions, `OrderedDict`, the storage types). Any other callable is refused, so a
//! malicious file cannot run code; it can only fail to load.

use std::collections::HashMap;
use std::io::{Cursor, Read};

use zip::ZipArchive;

use super::DType;

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

#[derive(Debug, Clone)]
#[allow(dead_code)] // payloads of scalars are only shown in error messages
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String),
    Storage { dtype: DType, key: String },
    Tensor { dtype: DType, key: String, offset: usize, shape: Vec<usize>, strides: Vec<usize> },
}

/// List the tensors of a `torch.save` zip archive.
pub fn read_index(bytes: &[u8]) -> Result<Vec<TensorRef>, String> {
    if !bytes.starts_with(b"PK\x03\x04") {
        return Err("not a zip archive: checkpoints written by torch older than 1.6 (legacy pickle format) \
                    are not supported; re-save the state dict with a newer torch or as safetensors"
            .into());
    }
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
        members.insert(rest, (start, f.size() as usize, stored));
    }
    let &(start, size, stored) = members.get("data.pkl").ok_or("no data.pkl in the archive")?;
    let pickle = if stored {
        bytes.get(start..start + size).ok_or("data.pkl runs past the end of the file")?.to_vec()
    } else {
        let mut f = zip.by_name(&pickle_member).map_err(|e| format!("data.pkl: {e}"))?;
        let mut v = Vec::new();
        f.read_to_end(&mut v).map_err(|e| format!("data.pkl: {e}"))?;
        v
    };
    let root = Unpickler { data: &pickle, pos: 0 }.load()?;
    let dict = state_dict(root)?;
    let mut out = Vec::new();
    for (k, v) in dict {
        let Value::Str(name) = k else { return Err("state dict key is not a string".into()) };
        let Value::Tensor { dtype, key, offset, shape, strides } = v else {
            continue; // non-tensor entries (e.g. `_metadata`-like extras) carry no weights
        };
        let &(start, size, stored) = members
            .get(&format!("data/{key}"))
            .ok_or_else(|| format!("tensor \"{name}\": storage data/{key} missing"))?;
        if !stored {
            return Err(format!("tensor \"{name}\": storage data/{key} is compressed, torch never writes that"));
        }
        let bytes_needed =
            (offset + shape.iter().zip(&strides).map(|(&d, &s)| d.saturating_sub(1) * s).sum::<usize>() + 1)
                * dtype.size();
        if shape.iter().product::<usize>() > 0 && bytes_needed > size {
            return Err(format!(
                "tensor \"{name}\" needs {bytes_needed} bytes of storage data/{key}, which has {size}"
            ));
        }
        out.push(TensorRef { name, dtype, shape, strides, offset: start + offset * dtype.size() });
    }
    Ok(out)
}

/// The state dict itself, also when wrapped as `{"state_dict": ...}` or `{"model": ...}`.
fn state_dict(root: Value) -> Result<Vec<(Value, Value)>, String> {
    let Value::Dict(items) = root else { return Err("the pickle does not hold a dict of tensors".into()) };
    if items.iter().any(|(_, v)| matches!(v, Value::Tensor { .. })) {
        return Ok(items);
    }
    for (k, v) in items {
        if matches!(&k, Value::Str(s) if s == "state_dict" || s == "model") {
            return state_dict(v);
        }
    }
    Err("the pickle holds no tensors".into())
}

fn storage_dtype(class: &str) -> DType {
    match class {
        "torch.FloatStorage" => DType::F32,
        "torch.HalfStorage" => DType::F16,
        "torch.BFloat16Storage" => DType::BF16,
        "torch.DoubleStorage" => DType::F64,
        _ => DType::Other("an integer or boolean type"),
    }
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Unpickler<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let s = self.data.get(self.pos..self.pos + n).ok_or("truncated pickle")?;
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn line(&mut self) -> Result<String, String> {
        let end = self.data[self.pos..].iter().position(|&b| b == b'\n').ok_or("truncated pickle line")?;
        let s = String::from_utf8_lossy(&self.data[self.pos..self.pos + end]).to_string();
        self.pos += end + 1;
        Ok(s)
    }

    fn string(&mut self, n: usize) -> Result<Value, String> {
        Ok(Value::Str(String::from_utf8_lossy(self.take(n)?).to_string()))
    }

    fn load(mut self) -> Result<Value, String> {
        let mut stack: Vec<Value> = Vec::new();
        let mut marks: Vec<usize> = Vec::new();
        let mut memo: HashMap<u32, Value> = HashMap::new();
        let pop = |stack: &mut Vec<Value>| stack.pop().ok_or_else(|| "pickle stack underflow".to_string());
        let pop_mark = |stack: &mut Vec<Value>, marks: &mut Vec<usize>| -> Result<Vec<Value>, String> {
            let m = marks.pop().ok_or("pickle MARK missing")?;
            Ok(stack.split_off(m))
        };
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.take(8)?; // FRAME
                }
                b'.' => return pop(&mut stack),
                b'}' => stack.push(Value::Dict(Vec::new())),
                b']' => stack.push(Value::List(Vec::new())),
                b')' => stack.push(Value::Tuple(Vec::new())),
                b'(' => marks.push(stack.len()),
                b'N' => stack.push(Value::None),
                0x88 => stack.push(Value::Bool(true)),
                0x89 => stack.push(Value::Bool(false)),
                b'J' => stack.push(Value::Int(i32::from_le_bytes(self.take(4)?.try_into().expect("4")) as i64)),
                b'K' => stack.push(Value::Int(self.u8()? as i64)),
                b'M' => stack.push(Value::Int(u16::from_le_bytes(self.take(2)?.try_into().expect("2")) as i64)),
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err(format!("integer of {n} bytes at pickle byte {at}"));
                    }
                    let mut v: i64 = 0;
                    for (i, &x) in b.iter().enumerate() {
                        v |= (x as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n); // sign-extend
                    }
                    stack.push(Value::Int(v));
                }
                b'G' => stack.push(Value::Float(f64::from_be_bytes(self.take(8)?.try_into().expect("8")))),
                b'X' | b'T' | b'B' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n)?;
                    stack.push(v);
                }
                0x8c | b'U' | b'C' => {
                    let n = self.u8()? as usize;
                    let v = self.string(n)?;
                    stack.push(v);
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.take(8)?.try_into().expect("8")) as usize;
                    let v = self.string(n)?;
                    stack.push(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    stack.push(Value::Global(format!("{module}.{name}")));
                }
                0x93 => {
                    let name = pop(&mut stack)?;
                    let module = pop(&mut stack)?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(format!("{m}.{n}"))),
                        _ => return Err(format!("STACK_GLOBAL without strings at pickle byte {at}")),
                    }
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    memo.insert(k, stack.last().ok_or("BINPUT on empty stack")?.clone());
                }
                b'r' => {
                    let k = self.u32()?;
                    memo.insert(k, stack.last().ok_or("LONG_BINPUT on empty stack")?.clone());
                }
                0x94 => {
                    let k = memo.len() as u32;
                    memo.insert(k, stack.last().ok_or("MEMOIZE on empty stack")?.clone());
                }
                b'h' | b'j' => {
                    let k = if op == b'h' { self.u8()? as u32 } else { self.u32()? };
                    stack.push(memo.get(&k).cloned().ok_or_else(|| format!("memo {k} missing"))?);
                }
                b't' => {
                    let items = pop_mark(&mut stack, &mut marks)?;
                    stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if stack.len() < n {
                        return Err("pickle stack underflow".into());
                    }
                    let items = stack.split_off(stack.len() - n);
                    stack.push(Value::Tuple(items));
                }
                b'l' => {
                    let items = pop_mark(&mut stack, &mut marks)?;
                    stack.push(Value::List(items));
                }
                b'a' => {
                    let v = pop(&mut stack)?;
                    match stack.last_mut() {
                        Some(Value::List(l)) => l.push(v),
                        _ => return Err(format!("APPEND to a non-list at pickle byte {at}")),
                    }
                }
                b'e' => {
                    let items = pop_mark(&mut stack, &mut marks)?;
                    match stack.last_mut() {
                        Some(Value::List(l)) => l.extend(items),
                        _ => return Err(format!("APPENDS to a non-list at pickle byte {at}")),
                    }
                }
                b'd' | b's' | b'u' => {
                    let items = match op {
                        b's' => {
                            let v = pop(&mut stack)?;
                            let k = pop(&mut stack)?;
                            vec![k, v]
                        }
                        _ => pop_mark(&mut stack, &mut marks)?,
                    };
                    if items.len() % 2 != 0 {
                        return Err(format!("odd number of dict items at pickle byte {at}"));
                    }
                    let pairs = items.chunks_exact(2).map(|p| (p[0].clone(), p[1].clone()));
                    if op == b'd' {
                        stack.push(Value::Dict(pairs.collect()));
                    } else {
                        match stack.last_mut() {
                            Some(Value::Dict(d)) => d.extend(pairs),
                            _ => return Err(format!("SETITEM on a non-dict at pickle byte {at}")),
                        }
                    }
                }
                b'Q' => {
                    let pid = pop(&mut stack)?;
                    stack.push(persistent_load(pid)?);
                }
                b'R' => {
                    let args = pop(&mut stack)?;
                    let func = pop(&mut stack)?;
                    stack.push(reduce(func, args)?);
                }
                b'b' => {
                    pop(&mut stack)?; // BUILD: object state (the state dict's `_metadata`), not needed
                }
                other => {
                    return Err(format!("unsupported pickle opcode 0x{other:02x} at byte {at}"));
                }
            }
        }
    }
}

/// `('storage', torch.FloatStorage, '0', 'cpu', numel)` → a storage reference.
fn persistent_load(pid: Value) -> Result<Value, String> {
    match pid {
        Value::Tuple(t) if t.len() >= 3 => match (&t[0], &t[1], &t[2]) {
            (Value::Str(kind), Value::Global(class), Value::Str(key)) if kind == "storage" => {
                Ok(Value::Storage { dtype: storage_dtype(class), key: key.clone() })
            }
            _ => Err(format!("unexpected persistent id {t:?}")),
        },
        other => Err(format!("unexpected persistent id {other:?}")),
    }
}

fn usizes(v: &Value) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|x| match x {
                Value::Int(i) if *i >= 0 => Ok(*i as usize),
                other => Err(format!("expected a size, got {other:?}")),
            })
            .collect(),
        other => Err(format!("expected a tuple of sizes, got {other:?}")),
    }
}

/// The only calls a checkpoint may make: rebuilding tensors and creating an empty OrderedDict.
fn reduce(func: Value, args: Value) -> Result<Value, String> {
    let Value::Global(name) = func else { return Err(format!("REDUCE on a non-callable {func:?}")) };
    let Value::Tuple(args) = args else { return Err(format!("{name}: arguments are not a tuple")) };
    match name.as_str() {
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" if args.len() >= 4 => {
            let Value::Storage { dtype, key } = &args[0] else {
                return Err(format!("{name}: first argument is not a storage"));
            };
            let Value::Int(offset) = args[1] else { return Err(format!("{name}: bad storage offset")) };
            Ok(Value::Tensor {
                dtype: *dtype,
                key: key.clone(),
                offset: offset.max(0) as usize,
                shape: usizes(&args[2])?,
                strides: usizes(&args[3])?,
            })
        }
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" if !args.is_empty() => {
            Ok(args[0].clone())
        }
        "collections.OrderedDict" => Ok(Value::Dict(Vec::new())),
        _ => Err(format!(
            "the checkpoint asks to call {name}, which speechtune does not do (only tensors are rebuilt); \
             convert it to safetensors instead"
        )),
    }
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

    #[test]
    fn rebuilds_a_strided_tensor_reference() {
        let v = Unpickler { data: &tensor_pickle(b"ctorch._utils\n_rebuild_tensor_v2\n"), pos: 0 }.load().unwrap();
        let items = state_dict(v).unwrap();
        assert_eq!(items.len(), 1);
        match &items[0].1 {
            Value::Tensor { dtype, key, offset, shape, strides } => {
                assert_eq!((*dtype, key.as_str(), *offset), (DType::F32, "0", 1));
                assert_eq!((shape.as_slice(), strides.as_slice()), (&[2usize, 3][..], &[1usize, 2][..]));
            }
            other => panic!("expected a tensor, got {other:?}"),
        }
    }

    #[test]
    fn refuses_to_call_anything_else() {
        let e = Unpickler { data: &tensor_pickle(b"cos\nsystem\n"), pos: 0 }.load().unwrap_err();
        assert!(e.contains("os.system") && e.contains("does not do"), "{e}");
    }

    #[test]
    fn legacy_and_truncated_files_are_reported() {
        assert!(read_index(b"\x80\x02}q\x00.").unwrap_err().contains("older than 1.6"));
        let e = Unpickler { data: b"\x80\x02}q\x00X\x05\x00", pos: 0 }.load().unwrap_err();
        assert!(e.contains("truncated"), "{e}");
    }
}
