//! PyTorch's `torch.save` checkpoints (`open_clip_pytorch_model.bin`): a zip holding `data.pkl`, a pickle of
//! the state dict, and `data/N`, the raw bytes of each storage. A pickle is a program (`GLOBAL os.system` +
//! `REDUCE` runs a shell command in Python), so this is not an unpickler: it reads only the opcodes a state
//! dict uses and knows only the names a state dict names (`collections.OrderedDict`,
//! `torch._utils._rebuild_tensor_v2`, `torch.*Storage`), builds plain values from them and refuses anything
//! else. Memory stays proportional to the file: lengths are checked against the bytes that are there, shared
//! objects are shared (not copied), tensors must lie inside their storage, and compressed entries (which
//! torch never writes, and which could inflate) are refused.

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

/// The largest `data.pkl` read: a state dict's pickle holds names and shapes, a few hundred KB for the
/// largest CLIP models.
const MAX_PICKLE_BYTES: u64 = 64 << 20;

type Obj = Rc<Value>;

enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(String),
    Tuple(Vec<Obj>),
    List(RefCell<Vec<Obj>>),
    Dict(RefCell<Vec<(Obj, Obj)>>),
    /// One of the names a state dict uses (see [`Global::parse`]).
    Global(Global),
    /// A storage as the persistent id names it: its element type and its entry under `data/`.
    Storage {
        dtype: DType,
        key: String,
    },
    Tensor(TensorRef),
}

/// Dropped without recursion: a pickle can nest a million tuples in a few megabytes, and dropping them
/// recursively would overflow the stack.
impl Drop for Value {
    fn drop(&mut self) {
        let mut pending = children(self);
        while let Some(obj) = pending.pop() {
            if let Ok(mut value) = Rc::try_unwrap(obj) {
                pending.extend(children(&mut value));
            }
        }
    }
}

fn children(v: &mut Value) -> Vec<Obj> {
    match v {
        Value::Tuple(items) => std::mem::take(items),
        Value::List(items) => items.take(),
        Value::Dict(entries) => entries.take().into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(DType),
}

impl Global {
    fn parse(module: &str, name: &str) -> Option<Global> {
        Some(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch", "FloatStorage") => Global::Storage(DType::F32),
            ("torch", "HalfStorage") => Global::Storage(DType::F16),
            ("torch", "BFloat16Storage") => Global::Storage(DType::BF16),
            ("torch", "DoubleStorage") => Global::Storage(DType::F64),
            _ => return None,
        })
    }
}

/// A tensor as `_rebuild_tensor_v2` describes it: a view (offset, size, stride, in elements) of a storage.
#[derive(Clone)]
struct TensorRef {
    dtype: DType,
    key: String,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// The tensors of a `torch.save`d state dict, by name, on the CPU in their stored dtype.
pub fn read_state_dict(path: &Path) -> anyhow::Result<Vec<(String, Tensor)>> {
    read(path).with_context(|| format!("cannot read the PyTorch checkpoint {}", path.display()))
}

fn read(path: &Path) -> anyhow::Result<Vec<(String, Tensor)>> {
    let file = std::fs::File::open(path).context("cannot open it")?;
    let file_len = file.metadata().context("cannot stat it")?.len();
    let mut zip = zip::ZipArchive::new(file).context(
        "it is not a zip archive: only the zip format of torch.save (PyTorch 1.6 and later) is read; re-save it \
         with a recent PyTorch, or use the model's .safetensors file",
    )?;
    let pickle_name = zip
        .file_names()
        .filter_map(Result::ok)
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .map(|n| n.into_owned())
        .context("it has no <name>/data.pkl: not a torch.save checkpoint")?;
    let prefix = pickle_name.trim_end_matches("data.pkl").to_owned();
    if let Ok(mut order) = zip.by_name(&format!("{prefix}byteorder")) {
        let mut text = String::new();
        order.by_ref().take(16).read_to_string(&mut text)?;
        if text.trim() != "little" {
            bail!("its tensors are stored {}-endian: only little-endian checkpoints are read", text.trim());
        }
    }
    let pickle = read_entry(&mut zip, &pickle_name, MAX_PICKLE_BYTES.min(file_len))?;
    let root = Machine::new(&pickle).run().with_context(|| format!("{pickle_name} is not a plain state dict"))?;
    let entries = match &*root {
        Value::Dict(entries) => last_of_each_key(&entries.borrow()),
        _ => bail!("{pickle_name} holds no dict of tensors"),
    };
    // Each storage is read when first needed and dropped after its last tensor, so that memory holds the
    // tensors and one storage, not every storage twice.
    let mut uses: HashMap<String, usize> = HashMap::new();
    for (_, value) in &entries {
        if let Value::Tensor(t) = &**value {
            *uses.entry(t.key.clone()).or_default() += 1;
        }
    }
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut made = 0u64;
    let mut out = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        let name = match &*name {
            Value::Str(s) => s.clone(),
            _ => bail!("{pickle_name}: a key of the state dict is not a string"),
        };
        let tensor = match &*value {
            Value::Tensor(t) => t.clone(),
            _ => bail!("{pickle_name}: `{name}` is not a tensor"),
        };
        if !storages.contains_key(&tensor.key) {
            let entry = format!("{prefix}data/{}", tensor.key);
            let bytes = read_entry(&mut zip, &entry, file_len)?;
            storages.insert(tensor.key.clone(), bytes);
        }
        let t = materialize(&tensor, &storages[&tensor.key]).with_context(|| format!("tensor `{name}`"))?;
        // Tensors may share a storage (views, tied weights), but a few hundred bytes of pickle must not make
        // gigabytes of copies: all of them together stay within twice the file.
        made = made.saturating_add(t.elem_count() as u64 * t.dtype().size_in_bytes() as u64);
        if made > file_len.saturating_mul(2) {
            bail!("its tensors would take more than twice the file's {file_len} bytes: refusing the copies");
        }
        if let Some(n) = uses.get_mut(&tensor.key) {
            *n -= 1;
            if *n == 0 {
                storages.remove(&tensor.key);
            }
        }
        out.push((name, t));
    }
    Ok(out)
}

/// One stored (uncompressed) zip entry, whole; `limit` bounds it further.
fn read_entry(zip: &mut zip::ZipArchive<std::fs::File>, name: &str, limit: u64) -> anyhow::Result<Vec<u8>> {
    let mut entry = zip.by_name(name).with_context(|| format!("it has no entry {name}"))?;
    if entry.compression() != zip::CompressionMethod::Stored {
        bail!("{name} is compressed ({:?}): torch.save stores its entries uncompressed", entry.compression());
    }
    // Stored: the size is the bytes the file holds, so reading it allocates no more than the file's length
    // (`limit` is at most that: a header may claim any size).
    let size = entry.size();
    if size > limit || size != entry.compressed_size() {
        bail!("{name} claims {size} bytes, more than it can hold (at most {limit}): the checkpoint is damaged");
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size)?);
    entry.read_to_end(&mut bytes).with_context(|| format!("cannot read {name}"))?;
    Ok(bytes)
}

/// The tensor's elements, copied out of its storage into a contiguous CPU tensor.
fn materialize(t: &TensorRef, storage: &[u8]) -> anyhow::Result<Tensor> {
    let size = t.dtype.size_in_bytes();
    let available = storage.len() / size;
    let count = t.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).context("its size overflows")?;
    if count > 0 {
        let last = t
            .shape
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |end, (&d, &s)| (d - 1).checked_mul(s).and_then(|x| x.checked_add(end)))
            .context("its extent overflows")?;
        if last >= available {
            bail!("it reaches element {last} of a storage of {available}: the checkpoint is damaged");
        }
    }
    let contiguous = {
        let mut expected = 1;
        let mut ok = true;
        for (&d, &s) in t.shape.iter().zip(&t.stride).rev() {
            ok &= d == 1 || s == expected;
            expected *= d;
        }
        ok
    };
    if count == 0 {
        return Ok(Tensor::zeros(t.shape.as_slice(), t.dtype, &Device::Cpu)?);
    }
    if contiguous {
        let bytes = &storage[t.offset * size..(t.offset + count) * size];
        return Ok(Tensor::from_raw_buffer(bytes, t.dtype, &t.shape, &Device::Cpu)?);
    }
    let bytes = {
        let mut bytes = Vec::with_capacity(count * size);
        let mut index = vec![0usize; t.shape.len()];
        for _ in 0..count {
            let at = t.offset + index.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
            bytes.extend_from_slice(&storage[at * size..(at + 1) * size]);
            for dim in (0..index.len()).rev() {
                index[dim] += 1;
                if index[dim] < t.shape[dim] {
                    break;
                }
                index[dim] = 0;
            }
        }
        bytes
    };
    Ok(Tensor::from_raw_buffer(&bytes, t.dtype, &t.shape, &Device::Cpu)?)
}

/// The pickle machine, restricted to what a state dict needs.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Obj>,
    marks: Vec<usize>,
    memo: HashMap<u32, Obj>,
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8]) -> Self {
        Machine { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() }
    }

    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            bail!("it ends in the middle of an opcode's argument (at byte {})", self.pos);
        };
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> anyhow::Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> anyhow::Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into()?))
    }

    fn u32(&mut self) -> anyhow::Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }

    fn line(&mut self) -> anyhow::Result<&'a str> {
        let rest = &self.data[self.pos..];
        let len = rest.iter().take(256).position(|&b| b == b'\n').context("a GLOBAL name is not terminated")?;
        let line = std::str::from_utf8(&rest[..len]).context("a GLOBAL name is not UTF-8")?;
        self.pos += len + 1;
        Ok(line)
    }

    fn string(&mut self, len: usize) -> anyhow::Result<Obj> {
        let bytes = self.take(len)?;
        Ok(Rc::new(Value::Str(std::str::from_utf8(bytes).context("a string is not UTF-8")?.to_owned())))
    }

    fn pop(&mut self) -> anyhow::Result<Obj> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            bail!("an opcode pops past a MARK");
        }
        self.stack.pop().context("an opcode pops an empty stack")
    }

    fn pop_mark(&mut self) -> anyhow::Result<Vec<Obj>> {
        let mark = self.marks.pop().context("a MARK is missing")?;
        Ok(self.stack.split_off(mark))
    }

    fn top(&self) -> anyhow::Result<&Obj> {
        self.stack.last().context("an opcode needs an object on the stack")
    }

    fn global(&mut self, module: &str, name: &str) -> anyhow::Result<Obj> {
        match Global::parse(module, name) {
            Some(g) => Ok(Rc::new(Value::Global(g))),
            None => bail!(
                "it calls for the Python object `{module}.{name}`, which a PyTorch state dict never names: \
                 refusing to load it (a pickle can run any code; this one is not a plain checkpoint)"
            ),
        }
    }

    fn run(mut self) -> anyhow::Result<Obj> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        bail!("pickle protocol {proto} is not supported");
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self.stack.push(Rc::new(Value::Dict(RefCell::new(Vec::new())))),
                b']' => self.stack.push(Rc::new(Value::List(RefCell::new(Vec::new())))),
                b')' => self.stack.push(Rc::new(Value::Tuple(Vec::new()))),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Rc::new(Value::Tuple(items)));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = (0..n).map(|_| self.pop()).collect::<anyhow::Result<Vec<_>>>()?;
                    items.reverse();
                    self.stack.push(Rc::new(Value::Tuple(items)));
                }
                b'N' => self.stack.push(Rc::new(Value::None)),
                0x88 => self.stack.push(Rc::new(Value::Bool)),
                0x89 => self.stack.push(Rc::new(Value::Bool)),
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Rc::new(Value::Int(v.into())));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Rc::new(Value::Int(v.into())));
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Rc::new(Value::Int(v.into())));
                }
                0x8a => {
                    // LONG1: a little-endian two's complement integer of n bytes; sizes and offsets fit in 8.
                    let n = self.u8()? as usize;
                    if n > 8 {
                        bail!("an integer of {n} bytes is larger than any size or offset");
                    }
                    let bytes = self.take(n)?;
                    let mut v: i64 = 0;
                    for (i, &b) in bytes.iter().enumerate() {
                        v |= (b as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                        v -= 1 << (8 * n);
                    }
                    self.stack.push(Rc::new(Value::Int(v)));
                }
                b'G' => {
                    self.take(8)?;
                    self.stack.push(Rc::new(Value::Float));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.string(n)?;
                    self.stack.push(s);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.string(n)?;
                    self.stack.push(s);
                }
                b'q' => {
                    let i = self.u8()?.into();
                    self.memo.insert(i, self.top()?.clone());
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo.insert(i, self.top()?.clone());
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo.insert(i, self.top()?.clone());
                }
                b'h' | b'j' => {
                    let i = if op == b'h' { self.u8()?.into() } else { self.u32()? };
                    let v = self.memo.get(&i).with_context(|| format!("memo {i} is read before it is written"))?;
                    self.stack.push(v.clone());
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(module, name)?;
                    self.stack.push(g);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (&*module, &*name) else {
                        bail!("STACK_GLOBAL takes two strings");
                    };
                    let g = self.global(module, name)?;
                    self.stack.push(g);
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = persistent_storage(&pid)?;
                    self.stack.push(Rc::new(storage));
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let result = reduce(&callable, &args)?;
                    self.stack.push(Rc::new(result));
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    dict_insert(self.top()?, vec![key, value])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    dict_insert(self.top()?, items)?;
                }
                b'a' => {
                    let item = self.pop()?;
                    list_extend(self.top()?, vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    list_extend(self.top()?, items)?;
                }
                b'b' => {
                    // BUILD: state for the object below it. A state dict's OrderedDict carries `_metadata`
                    // (module versions) this way; it says nothing about the tensors.
                    let _state = self.pop()?;
                    if !matches!(&**self.top()?, Value::Dict(_)) {
                        bail!("BUILD on something other than a dict (at byte {at})");
                    }
                }
                other => bail!(
                    "it uses pickle opcode 0x{other:02x} (at byte {at}), which a PyTorch state dict does not: \
                     refusing to interpret it"
                ),
            }
        }
    }
}

fn dict_insert(dict: &Obj, items: Vec<Obj>) -> anyhow::Result<()> {
    let Value::Dict(entries) = &**dict else { bail!("SETITEM(S) on something other than a dict") };
    if !items.len().is_multiple_of(2) {
        bail!("SETITEMS with an odd number of objects");
    }
    let mut entries = entries.borrow_mut();
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        entries.push((k, v));
    }
    Ok(())
}

/// The dict's entries with a repeated key's last value in its first place, as a Python dict keeps it.
fn last_of_each_key(entries: &[(Obj, Obj)]) -> Vec<(Obj, Obj)> {
    let mut out: Vec<(Obj, Obj)> = Vec::with_capacity(entries.len());
    let mut at: HashMap<&str, usize> = HashMap::new();
    for (k, v) in entries {
        if let Value::Str(name) = &**k {
            if let Some(&i) = at.get(name.as_str()) {
                out[i].1 = v.clone();
                continue;
            }
            at.insert(name, out.len());
        }
        out.push((k.clone(), v.clone()));
    }
    out
}

fn list_extend(list: &Obj, items: Vec<Obj>) -> anyhow::Result<()> {
    let Value::List(v) = &**list else { bail!("APPEND(S) on something other than a list") };
    v.borrow_mut().extend(items);
    Ok(())
}

/// `('storage', torch.FloatStorage, '0', 'cpu', numel)` → the storage it names.
fn persistent_storage(pid: &Value) -> anyhow::Result<Value> {
    let Value::Tuple(items) = pid else { bail!("a persistent id is not a tuple") };
    match items.as_slice() {
        [kind, class, key, _location, _numel] => {
            let (Value::Str(kind), Value::Global(Global::Storage(dtype)), Value::Str(key)) =
                (&**kind, &**class, &**key)
            else {
                bail!("a persistent id is not ('storage', torch.<Type>Storage, key, location, size)");
            };
            if kind != "storage" || key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                bail!("a persistent id names {kind:?} {key:?}, not a storage");
            }
            Ok(Value::Storage { dtype: *dtype, key: key.clone() })
        }
        _ => bail!("a persistent id has {} parts, not a storage's 5", items.len()),
    }
}

fn int(v: &Value, what: &str) -> anyhow::Result<usize> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as usize),
        _ => bail!("{what} is not a non-negative integer"),
    }
}

fn ints(v: &Value, what: &str) -> anyhow::Result<Vec<usize>> {
    match v {
        Value::Tuple(items) => items.iter().map(|i| int(i, what)).collect(),
        _ => bail!("{what} is not a tuple"),
    }
}

/// REDUCE with one of the allowed callables: builds the value, calls nothing.
fn reduce(callable: &Value, args: &Value) -> anyhow::Result<Value> {
    let Value::Global(g) = callable else { bail!("REDUCE on something that is not an allowed name") };
    let Value::Tuple(args) = args else { bail!("REDUCE's arguments are not a tuple") };
    match g {
        Global::OrderedDict if args.is_empty() => Ok(Value::Dict(RefCell::new(Vec::new()))),
        Global::RebuildTensor if (6..=7).contains(&args.len()) => {
            let Value::Storage { dtype, key } = &*args[0] else { bail!("a tensor's storage is not a storage") };
            let shape = ints(&args[2], "a tensor's size")?;
            let stride = ints(&args[3], "a tensor's stride")?;
            if shape.len() != stride.len() {
                bail!("a tensor's size and stride differ in length");
            }
            Ok(Value::Tensor(TensorRef {
                dtype: *dtype,
                key: key.clone(),
                offset: int(&args[1], "a tensor's offset")?,
                shape,
                stride,
            }))
        }
        Global::RebuildParameter if args.len() == 3 => match &*args[0] {
            Value::Tensor(t) => Ok(Value::Tensor(t.clone())),
            _ => bail!("a parameter's data is not a tensor"),
        },
        other => bail!("{other:?} called with {} arguments, not as a state dict calls it", args.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn checkpoint(pickle: &[u8], storages: &[(&str, &[u8])]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut zip = zip::ZipWriter::new(file.reopen().unwrap());
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", opts).unwrap();
        zip.write_all(pickle).unwrap();
        zip.start_file("archive/byteorder", opts).unwrap();
        zip.write_all(b"little").unwrap();
        for (key, bytes) in storages {
            zip.start_file(format!("archive/data/{key}"), opts).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        file
    }

    fn err(pickle: &[u8]) -> String {
        let f = checkpoint(pickle, &[]);
        format!("{:#}", read_state_dict(f.path()).unwrap_err())
    }

    /// `_rebuild_tensor_v2(...)` of a [2, 3] float tensor of storage '0' with `stride`, as torch.save writes it.
    fn tensor(stride: (u8, u8), offset: u8) -> Vec<u8> {
        let mut p = b"ctorch._utils\n_rebuild_tensor_v2\n(".to_vec();
        p.extend(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x08tQ");
        p.extend([b'K', offset, b'K', 2, b'K', 3, 0x86, b'K', stride.0, b'K', stride.1, 0x86, 0x89]);
        p.extend(b"ccollections\nOrderedDict\n)RtR");
        p
    }

    /// `{'w': tensor}`, a plain dict.
    fn one_tensor(stride: (u8, u8), offset: u8) -> Vec<u8> {
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'(', b'X', 1, 0, 0, 0, b'w'];
        p.extend(tensor(stride, offset));
        p.extend(b"u.");
        p
    }

    fn floats(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_contiguous_and_strided_tensors() {
        let data = floats(&[0., 1., 2., 3., 4., 5., 6., 7.]);
        let f = checkpoint(&one_tensor((3, 1), 1), &[("0", &data)]);
        let t = read_state_dict(f.path()).unwrap();
        assert_eq!(t[0].0, "w");
        assert_eq!(t[0].1.to_vec2::<f32>().unwrap(), vec![vec![1., 2., 3.], vec![4., 5., 6.]]);
        // A transposed view: stride (1, 2).
        let f = checkpoint(&one_tensor((1, 2), 0), &[("0", &data)]);
        let t = read_state_dict(f.path()).unwrap();
        assert_eq!(t[0].1.to_vec2::<f32>().unwrap(), vec![vec![0., 2., 4.], vec![1., 3., 5.]]);
    }

    /// `torch.save(model.state_dict())`: an OrderedDict whose `_metadata` attribute comes as BUILD state.
    #[test]
    fn reads_a_state_dict_with_its_metadata() {
        let mut p = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00w".to_vec();
        p.extend(tensor((3, 1), 0));
        p.extend(b"u}X\x09\x00\x00\x00_metadatah\x00)R(X\x00\x00\x00\x00}X\x07\x00\x00\x00versionK\x01susb.");
        let f = checkpoint(&p, &[("0", &floats(&[0., 1., 2., 3., 4., 5.]))]);
        let t = read_state_dict(f.path()).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].1.to_vec2::<f32>().unwrap(), vec![vec![0., 1., 2.], vec![3., 4., 5.]]);
    }

    #[test]
    fn a_tensor_outside_its_storage_is_refused() {
        let data = floats(&[0., 1., 2., 3.]);
        let f = checkpoint(&one_tensor((3, 1), 0), &[("0", &data)]);
        let e = format!("{:#}", read_state_dict(f.path()).unwrap_err());
        assert!(e.contains("tensor `w`") && e.contains("damaged"), "{e}");
    }

    #[test]
    fn code_in_the_pickle_is_refused_not_run() {
        // os.system('touch /tmp/x'): GLOBAL + REDUCE.
        let e = err(b"\x80\x02cos\nsystem\nX\x0b\x00\x00\x00touch /tmp/x\x85R.");
        assert!(e.contains("`os.system`") && e.contains("refusing"), "{e}");
        let e = err(b"\x80\x02cbuiltins\neval\n.");
        assert!(e.contains("`builtins.eval`"), "{e}");
        // STACK_GLOBAL spells the name from strings.
        let e = err(b"\x80\x04\x8c\x05posix\x8c\x06system\x93.");
        assert!(e.contains("`posix.system`"), "{e}");
        // INST and OBJ (other ways to call) are opcodes a state dict never uses.
        let e = err(b"\x80\x02(ios\nsystem\n.");
        assert!(e.contains("opcode 0x69"), "{e}");
    }

    #[test]
    fn lengths_beyond_the_data_are_refused_without_allocating() {
        let e = err(b"\x80\x02X\xff\xff\xff\xff");
        assert!(e.contains("ends in the middle"), "{e}");
        let e = err(b"\x80\x02h\x05.");
        assert!(e.contains("memo 5"), "{e}");
        let e = err(b"\x80\x02(t.");
        assert!(e.contains("not a plain state dict") || e.contains("no dict"), "{e}");
    }

    #[test]
    fn deep_nesting_and_many_views_of_one_storage_are_harmless() {
        // A million nested tuples: refused (not a dict), and dropped without overflowing the stack.
        let mut p = b"\x80\x02)".to_vec();
        p.extend(std::iter::repeat_n(0x85u8, 1_000_000));
        p.push(b'.');
        assert!(err(&p).contains("no dict"));
        // 200 tensors viewing one 4 KB storage in full: 800 KB of copies from a 5 KB file.
        let mut p = vec![0x80, 2, b'}', b'('];
        for i in 0..200u8 {
            p.extend([b'X', 2, 0, 0, 0, b'a' + i / 16, b'a' + i % 16]);
            p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
            p.extend(
                b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuM\x00\x04tQ",
            );
            p.extend(b"K\x00M\x00\x04\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtR");
        }
        p.extend(b"u.");
        let f = checkpoint(&p, &[("0", &floats(&[0.5; 1024]))]);
        let e = format!("{:#}", read_state_dict(f.path()).unwrap_err());
        assert!(e.contains("twice the file"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_a_zip_says_what_is_read() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), b"\x80\x02}q\x00.").unwrap();
        let e = format!("{:#}", read_state_dict(f.path()).unwrap_err());
        assert!(e.contains(&f.path().display().to_string()) && e.contains("zip format of torch.save"), "{e}");
    }
}
