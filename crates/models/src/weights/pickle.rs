//! A pickle reader that executes nothing.
//!
//! Python's unpickler calls whatever callable a file names, so a downloaded checkpoint can run
//! code. This is a stack machine over the opcodes of protocols 0-5 that builds plain values
//! instead, and accepts only an allow-list of names: torch's tensor rebuild functions and
//! storage types, the containers `OrderedDict`/`defaultdict`/`set`, and the configuration
//! objects fairseq stores (argparse `Namespace`, omegaconf's `DictConfig`/`ListConfig` and
//! their nodes, enum members of fairseq's and omegaconf's own classes), which become plain
//! data. Any other callable is refused, so a malicious file can only fail to load.
//!
//! Values live in an arena and refer to each other by index, so shared and self-referencing
//! objects (pickle's memo) cost nothing and mutations after memoisation are seen everywhere.
//! Every opcode adds at most one value and nothing is allocated beyond the bytes it reads, so
//! memory stays linear in the file's size.

use std::collections::HashMap;

use super::DType;

pub type Id = usize;

#[derive(Debug, Clone)]
#[allow(dead_code)] // some payloads are only shown in error messages
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits (torch's legacy magic number); its little-endian bytes.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    /// A name (`module.qualname`) referenced, not called.
    Global(String),
    /// An instance of an allow-listed data class, with the state BUILD gave it.
    Object {
        class: String,
        state: Option<Id>,
    },
    /// Something harmless that carries no data speechtune uses (a typing expression, a numpy
    /// scalar in training statistics).
    Opaque(&'static str),
    Storage {
        dtype: DType,
        key: String,
    },
    Tensor {
        dtype: DType,
        key: String,
        offset: usize,
        shape: Vec<usize>,
        strides: Vec<usize>,
    },
}

/// One unpickled object graph.
#[derive(Debug)]
pub struct Pickle {
    pub values: Vec<Value>,
    pub root: Id,
    /// Storages named by persistent ids: key → (dtype, element size in bytes).
    pub storages: HashMap<String, (DType, usize)>,
    /// Where the pickle ended (its STOP opcode + 1).
    pub end: usize,
}

impl Pickle {
    pub fn get(&self, id: Id) -> &Value {
        &self.values[id]
    }

    /// The value under a string key of a dict, if `id` is a dict that has it.
    pub fn lookup(&self, id: Id, key: &str) -> Option<Id> {
        match self.get(id) {
            Value::Dict(items) => {
                items.iter().rev().find(|(k, _)| matches!(self.get(*k), Value::Str(s) if s == key)).map(|&(_, v)| v)
            }
            _ => None,
        }
    }

    /// The value as JSON, with configuration objects rebuilt as plain data: a `Namespace` or
    /// `DictConfig` becomes an object, a `ListConfig` an array, an omegaconf node its value.
    /// Tensors and opaque values become null. Deeper than 64 levels, or past a million values
    /// (shared objects are expanded), is an error rather than unbounded work.
    pub fn to_json(&self, id: Id) -> Result<serde_json::Value, String> {
        let mut budget = 1_000_000usize;
        self.json(id, 0, &mut budget)
    }

    fn json(&self, id: Id, depth: usize, budget: &mut usize) -> Result<serde_json::Value, String> {
        use serde_json::Value as J;
        if depth > 64 {
            return Err("configuration nested deeper than 64 levels".into());
        }
        *budget = budget.checked_sub(1).ok_or("configuration expands to more than a million values")?;
        let items = |ids: &[Id], budget: &mut usize| -> Result<J, String> {
            ids.iter().map(|&i| self.json(i, depth + 1, budget)).collect::<Result<Vec<_>, _>>().map(J::Array)
        };
        Ok(match self.get(id) {
            Value::None | Value::Opaque(_) | Value::Tensor { .. } | Value::Storage { .. } | Value::BigInt(_) => J::Null,
            Value::Bytes(_) => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map(J::Number).unwrap_or(J::Null),
            Value::Str(s) => J::String(s.clone()),
            Value::Global(g) => J::String(g.clone()),
            Value::Tuple(v) | Value::List(v) => items(v, budget)?,
            Value::Dict(pairs) => {
                let mut map = serde_json::Map::new();
                for &(k, v) in pairs {
                    let key = match self.get(k) {
                        Value::Str(s) => s.clone(),
                        Value::Int(i) => i.to_string(),
                        Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
                        Value::None => "None".to_string(),
                        _ => continue, // keys that are objects carry no configuration
                    };
                    map.insert(key, self.json(v, depth + 1, budget)?);
                }
                J::Object(map)
            }
            Value::Object { class, state } => {
                let Some(state) = *state else { return Ok(J::Null) };
                if class == "argparse.Namespace" {
                    self.json(state, depth + 1, budget)?
                } else if class == "omegaconf.dictconfig.DictConfig" || class == "omegaconf.listconfig.ListConfig" {
                    match self.lookup(state, "_content") {
                        Some(c) => self.json(c, depth + 1, budget)?,
                        None => J::Null,
                    }
                } else if class.starts_with("omegaconf.nodes.") {
                    match self.lookup(state, "_val") {
                        Some(v) => self.json(v, depth + 1, budget)?,
                        None => J::Null,
                    }
                } else {
                    J::Null // omegaconf's metadata
                }
            }
        })
    }
}

/// Element type and size of a torch storage class.
fn storage_type(class: &str) -> (DType, usize) {
    match class.rsplit('.').next().unwrap_or(class) {
        "FloatStorage" => (DType::F32, 4),
        "HalfStorage" => (DType::F16, 2),
        "BFloat16Storage" => (DType::BF16, 2),
        "DoubleStorage" => (DType::F64, 8),
        "BoolStorage" => (DType::Bool, 1),
        "LongStorage" => (DType::Other("int64"), 8),
        "IntStorage" => (DType::Other("int32"), 4),
        "ShortStorage" => (DType::Other("int16"), 2),
        "ByteStorage" => (DType::Other("uint8"), 1),
        "CharStorage" => (DType::Other("int8"), 1),
        _ => (DType::Other("an unknown storage type"), 1),
    }
}

/// Classes whose instances may be created (their state is data): argparse's Namespace and
/// omegaconf's containers, nodes and metadata.
fn constructible(class: &str) -> bool {
    class == "argparse.Namespace" || class.starts_with("omegaconf.")
}

/// Normalise Python 2 module names in globals.
fn global_name(module: &str, name: &str) -> String {
    let module = match module {
        "__builtin__" => "builtins",
        "copy_reg" => "copyreg",
        m => m,
    };
    format!("{module}.{name}")
}

pub struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    values: Vec<Value>,
    storages: HashMap<String, (DType, usize)>,
}

impl<'a> Unpickler<'a> {
    /// Read the pickle starting at byte `pos` of `data`.
    pub fn new(data: &'a [u8], pos: usize) -> Self {
        Self { data, pos, values: Vec::new(), storages: HashMap::new() }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or("truncated pickle")?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == b'\n').ok_or("truncated pickle line")?;
        let s = String::from_utf8_lossy(&rest[..end]).to_string();
        self.pos += end + 1;
        Ok(s)
    }

    fn add(&mut self, v: Value) -> Id {
        self.values.push(v);
        self.values.len() - 1
    }

    fn str_of(&self, id: Id) -> Option<&str> {
        match &self.values[id] {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    fn int(bytes: &[u8]) -> Value {
        if bytes.len() > 8 {
            return Value::BigInt(bytes.to_vec());
        }
        let mut v: i64 = 0;
        for (i, &x) in bytes.iter().enumerate() {
            v |= (x as i64) << (8 * i);
        }
        let n = bytes.len();
        if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
            v -= 1i64 << (8 * n); // sign-extend
        }
        Value::Int(v)
    }

    pub fn load(mut self) -> Result<Pickle, String> {
        let mut stack: Vec<Id> = Vec::new();
        let mut marks: Vec<usize> = Vec::new();
        let mut memo: HashMap<u64, Id> = HashMap::new();
        let pop = |stack: &mut Vec<Id>| stack.pop().ok_or_else(|| "pickle stack underflow".to_string());
        let pop_mark = |stack: &mut Vec<Id>, marks: &mut Vec<usize>| -> Result<Vec<Id>, String> {
            let m = marks.pop().ok_or("pickle MARK missing")?;
            if m > stack.len() {
                return Err("pickle MARK above the stack".into());
            }
            Ok(stack.split_off(m))
        };
        loop {
            let at = self.pos;
            let op = self.u8()?;
            let pushed = match op {
                0x80 => {
                    self.u8()?; // PROTO
                    None
                }
                0x95 => {
                    self.take(8)?; // FRAME
                    None
                }
                b'.' => {
                    let root = pop(&mut stack)?;
                    return Ok(Pickle { values: self.values, root, storages: self.storages, end: self.pos });
                }
                b'}' => Some(Value::Dict(Vec::new())),
                b']' => Some(Value::List(Vec::new())),
                b')' => Some(Value::Tuple(Vec::new())),
                0x8f => Some(Value::List(Vec::new())), // EMPTY_SET
                b'(' => {
                    marks.push(stack.len());
                    None
                }
                b'0' => {
                    pop(&mut stack)?;
                    None
                }
                b'1' => {
                    pop_mark(&mut stack, &mut marks)?;
                    None
                }
                b'2' => {
                    let top = *stack.last().ok_or("DUP on an empty stack")?;
                    stack.push(top);
                    None
                }
                b'N' => Some(Value::None),
                0x88 => Some(Value::Bool(true)),
                0x89 => Some(Value::Bool(false)),
                b'J' => Some(Value::Int(i32::from_le_bytes(self.take(4)?.try_into().expect("4")) as i64)),
                b'K' => Some(Value::Int(self.u8()? as i64)),
                b'M' => Some(Value::Int(u16::from_le_bytes(self.take(2)?.try_into().expect("2")) as i64)),
                0x8a => {
                    let n = self.u8()? as usize;
                    Some(Self::int(self.take(n)?))
                }
                0x8b => {
                    let n = self.u32()? as usize;
                    Some(Self::int(self.take(n)?))
                }
                b'I' | b'L' => {
                    let line = self.line()?;
                    let t = line.trim_end_matches('L');
                    Some(match t {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        _ => Value::Int(t.parse().map_err(|_| format!("bad integer {line:?} at pickle byte {at}"))?),
                    })
                }
                b'F' => {
                    let line = self.line()?;
                    Some(Value::Float(line.parse().map_err(|_| format!("bad float {line:?} at pickle byte {at}"))?))
                }
                b'G' => Some(Value::Float(f64::from_be_bytes(self.take(8)?.try_into().expect("8")))),
                b'X' | b'T' => {
                    let n = self.u32()? as usize;
                    Some(Value::Str(String::from_utf8_lossy(self.take(n)?).to_string()))
                }
                0x8c | b'U' => {
                    let n = self.u8()? as usize;
                    Some(Value::Str(String::from_utf8_lossy(self.take(n)?).to_string()))
                }
                0x8d => {
                    let n = usize::try_from(self.u64()?).map_err(|_| "string longer than memory")?;
                    Some(Value::Str(String::from_utf8_lossy(self.take(n)?).to_string()))
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    Some(Value::Bytes(self.take(n)?.to_vec()))
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    Some(Value::Bytes(self.take(n)?.to_vec()))
                }
                0x8e | 0x96 => {
                    let n = usize::try_from(self.u64()?).map_err(|_| "bytes longer than memory")?;
                    Some(Value::Bytes(self.take(n)?.to_vec()))
                }
                b'V' | b'S' => {
                    let line = self.line()?;
                    Some(Value::Str(line.trim_matches(|c| c == '\'' || c == '"').to_string()))
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    Some(Value::Global(global_name(&module, &name)))
                }
                0x93 => {
                    let name = pop(&mut stack)?;
                    let module = pop(&mut stack)?;
                    match (self.str_of(module), self.str_of(name)) {
                        (Some(m), Some(n)) => Some(Value::Global(global_name(m, n))),
                        _ => return Err(format!("STACK_GLOBAL without strings at pickle byte {at}")),
                    }
                }
                b'q' | b'r' | b'p' | 0x94 => {
                    let k = match op {
                        b'q' => self.u8()? as u64,
                        b'r' => self.u32()? as u64,
                        b'p' => {
                            let line = self.line()?;
                            line.parse().map_err(|_| format!("bad PUT {line:?} at pickle byte {at}"))?
                        }
                        _ => memo.len() as u64,
                    };
                    memo.insert(k, *stack.last().ok_or("memo PUT on an empty stack")?);
                    None
                }
                b'h' | b'j' | b'g' => {
                    let k = match op {
                        b'h' => self.u8()? as u64,
                        b'j' => self.u32()? as u64,
                        _ => {
                            let line = self.line()?;
                            line.parse().map_err(|_| format!("bad GET {line:?} at pickle byte {at}"))?
                        }
                    };
                    stack.push(*memo.get(&k).ok_or_else(|| format!("memo {k} missing at pickle byte {at}"))?);
                    None
                }
                b't' => Some(Value::Tuple(pop_mark(&mut stack, &mut marks)?)),
                0x91 => Some(Value::List(pop_mark(&mut stack, &mut marks)?)), // FROZENSET
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if stack.len() < n {
                        return Err("pickle stack underflow".into());
                    }
                    Some(Value::Tuple(stack.split_off(stack.len() - n)))
                }
                b'l' => Some(Value::List(pop_mark(&mut stack, &mut marks)?)),
                b'a' | b'e' | 0x90 => {
                    let items = if op == b'a' { vec![pop(&mut stack)?] } else { pop_mark(&mut stack, &mut marks)? };
                    let target = *stack.last().ok_or("APPEND on an empty stack")?;
                    match &mut self.values[target] {
                        Value::List(l) => l.extend(items),
                        _ => return Err(format!("APPEND to a non-list at pickle byte {at}")),
                    }
                    None
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
                    let pairs = items.chunks_exact(2).map(|p| (p[0], p[1]));
                    if op == b'd' {
                        Some(Value::Dict(pairs.collect()))
                    } else {
                        let target = *stack.last().ok_or("SETITEM on an empty stack")?;
                        match &mut self.values[target] {
                            Value::Dict(d) => d.extend(pairs),
                            _ => return Err(format!("SETITEM on a non-dict at pickle byte {at}")),
                        }
                        None
                    }
                }
                b'Q' => {
                    let pid = pop(&mut stack)?;
                    Some(self.persistent_load(pid)?)
                }
                b'R' => {
                    let args = pop(&mut stack)?;
                    let func = pop(&mut stack)?;
                    match self.reduce(func, args)? {
                        Reduced::New(v) => Some(v),
                        Reduced::Existing(id) => {
                            stack.push(id);
                            None
                        }
                    }
                }
                0x81 | 0x92 => {
                    if op == 0x92 {
                        pop(&mut stack)?; // NEWOBJ_EX keyword arguments
                    }
                    let _args = pop(&mut stack)?;
                    let cls = pop(&mut stack)?;
                    Some(self.new_object(cls)?)
                }
                b'b' => {
                    let state = pop(&mut stack)?;
                    let target = *stack.last().ok_or("BUILD on an empty stack")?;
                    if let Value::Object { state: s, .. } = &mut self.values[target] {
                        *s = Some(state);
                    }
                    // Other targets (a state dict's `_metadata`, a parameter's hooks): not needed.
                    None
                }
                b'i' | b'o' | 0x82..=0x84 | b'P' => {
                    return Err(format!(
                        "pickle opcode 0x{op:02x} at byte {at} instantiates a class or an extension by \
                         protocol-0 rules, which speechtune does not do"
                    ));
                }
                other => return Err(format!("unsupported pickle opcode 0x{other:02x} at byte {at}")),
            };
            if let Some(v) = pushed {
                let id = self.add(v);
                stack.push(id);
            }
        }
    }

    /// `('storage', torch.FloatStorage, '0', 'cpu', numel[, view])` → a storage reference.
    fn persistent_load(&mut self, pid: Id) -> Result<Value, String> {
        if let Value::Tuple(t) = &self.values[pid]
            && t.len() >= 3
            && let (Value::Str(kind), Value::Global(class), Value::Str(key)) =
                (&self.values[t[0]], &self.values[t[1]], &self.values[t[2]])
            && kind == "storage"
        {
            let (dtype, elem_size) = storage_type(class);
            let key = key.clone();
            self.storages.insert(key.clone(), (dtype, elem_size));
            return Ok(Value::Storage { dtype, key });
        }
        Err(format!("unexpected persistent id {:?}", self.values[pid]))
    }

    fn new_object(&self, cls: Id) -> Result<Value, String> {
        match &self.values[cls] {
            Value::Global(class) if constructible(class) => Ok(Value::Object { class: class.clone(), state: None }),
            Value::Global(class) => Err(refused(class)),
            other => Err(format!("NEWOBJ of a non-class {other:?}")),
        }
    }

    fn usizes(&self, id: Id) -> Result<Vec<usize>, String> {
        match &self.values[id] {
            Value::Tuple(items) | Value::List(items) => items
                .iter()
                .map(|&x| match &self.values[x] {
                    Value::Int(i) if *i >= 0 => Ok(*i as usize),
                    other => Err(format!("expected a size, got {other:?}")),
                })
                .collect(),
            other => Err(format!("expected a tuple of sizes, got {other:?}")),
        }
    }

    /// The calls a checkpoint may make, each answered with data.
    fn reduce(&mut self, func: Id, args: Id) -> Result<Reduced, String> {
        let Value::Global(name) = &self.values[func] else {
            return Err(format!("REDUCE on a non-callable {:?}", self.values[func]));
        };
        let name = name.clone();
        let Value::Tuple(args) = self.values[args].clone() else {
            return Err(format!("{name}: arguments are not a tuple"));
        };
        let scalar = |v: &Value| matches!(v, Value::Str(_) | Value::Int(_) | Value::Float(_) | Value::Bool(_));
        Ok(Reduced::New(match name.as_str() {
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" if args.len() >= 4 => {
                let Value::Storage { dtype, key, .. } = &self.values[args[0]] else {
                    return Err(format!("{name}: first argument is not a storage"));
                };
                let Value::Int(offset) = self.values[args[1]] else {
                    return Err(format!("{name}: bad storage offset"));
                };
                Value::Tensor {
                    dtype: *dtype,
                    key: key.clone(),
                    offset: usize::try_from(offset).map_err(|_| format!("{name}: negative storage offset"))?,
                    shape: self.usizes(args[2])?,
                    strides: self.usizes(args[3])?,
                }
            }
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" if !args.is_empty() => {
                return Ok(Reduced::Existing(args[0]));
            }
            "collections.OrderedDict" | "collections.defaultdict" => {
                // `OrderedDict([(k, v), ...])` also arrives as one list of pairs.
                let mut pairs = Vec::new();
                if name == "collections.OrderedDict"
                    && let Some(Value::List(items)) = args.first().map(|&a| &self.values[a])
                {
                    for &p in items {
                        match &self.values[p] {
                            Value::Tuple(kv) | Value::List(kv) if kv.len() == 2 => pairs.push((kv[0], kv[1])),
                            _ => return Err(format!("{name}: an item is not a pair")),
                        }
                    }
                }
                Value::Dict(pairs)
            }
            "builtins.set" | "builtins.frozenset" => match args.first().map(|&a| &self.values[a]) {
                Some(Value::List(items)) | Some(Value::Tuple(items)) => Value::List(items.clone()),
                _ => Value::List(Vec::new()),
            },
            "copyreg._reconstructor" if !args.is_empty() => return Ok(Reduced::New(self.new_object(args[0])?)),
            // typing expressions in omegaconf's metadata (`List[str]` is `getitem(List, str)`).
            "_operator.getitem" | "operator.getitem" => Value::Opaque("a typing expression"),
            // numbers in training statistics
            "numpy.core.multiarray.scalar" | "numpy._core.multiarray.scalar" | "numpy.dtype" => {
                Value::Opaque("a numpy scalar")
            }
            // enum members of fairseq's and omegaconf's own configuration enums: their value
            n if (n.starts_with("fairseq.") || n.starts_with("omegaconf."))
                && args.len() == 1
                && scalar(&self.values[args[0]]) =>
            {
                return Ok(Reduced::Existing(args[0]));
            }
            _ => return Err(refused(&name)),
        }))
    }
}

enum Reduced {
    New(Value),
    Existing(Id),
}

fn refused(name: &str) -> String {
    format!(
        "the checkpoint asks to call {name}, which speechtune does not do (only tensors and configuration \
         data are rebuilt); convert it to safetensors instead"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memoised_objects_see_later_mutations_and_cycles_are_bounded() {
        // d = {}; d["self"] = d; d["x"] = [1] -- memo 0 is d, taken before its items are set.
        let p = b"\x80\x02}q\x00(X\x04\x00\x00\x00selfh\x00X\x01\x00\x00\x00x]K\x01au.";
        let pk = Unpickler::new(p, 0).load().unwrap();
        let inner = pk.lookup(pk.root, "self").unwrap();
        assert_eq!(inner, pk.root, "the memo refers to the same dict");
        assert!(pk.lookup(inner, "x").is_some(), "items set after memoisation are visible");
        let e = pk.to_json(pk.root).unwrap_err();
        assert!(e.contains("deeper than 64"), "{e}");
    }

    #[test]
    fn lengths_past_the_end_are_refused_without_allocating() {
        // BINUNICODE8 claiming 2^63 bytes, and a SHORT_BINBYTES running past the end.
        let e = Unpickler::new(b"\x80\x04\x8d\x00\x00\x00\x00\x00\x00\x00\x80.", 0).load().unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let e = Unpickler::new(b"C\x10abc", 0).load().unwrap_err();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn namespaces_and_enums_become_plain_data() {
        // argparse.Namespace(arch='wav2vec2', layers=[1, 2]) with a fairseq enum member value.
        let p = b"\x80\x02cargparse\nNamespace\nq\x00)\x81q\x01}q\x02(X\x04\x00\x00\x00archq\x03\
                  cfairseq.dataclass.constants\nChoices\n\x58\x08\x00\x00\x00wav2vec2\x85RX\x06\x00\x00\x00\
                  layers]q\x04(K\x01K\x02eub.";
        let pk = Unpickler::new(p, 0).load().unwrap();
        let j = pk.to_json(pk.root).unwrap();
        assert_eq!(j, serde_json::json!({"arch": "wav2vec2", "layers": [1, 2]}));
    }

    #[test]
    fn other_classes_are_refused() {
        let e = Unpickler::new(b"\x80\x02cposix\nsystem\nq\x00)\x81.", 0).load().unwrap_err();
        assert!(e.contains("posix.system") && e.contains("does not do"), "{e}");
        let e = Unpickler::new(b"cos\nsystem\n(S'ls'\ntR.", 0).load().unwrap_err();
        assert!(e.contains("os.system"), "{e}");
        let e = Unpickler::new(b"(cos\nsystem\nS'ls'\no.", 0).load().unwrap_err();
        assert!(e.contains("protocol-0"), "{e}");
    }
}
