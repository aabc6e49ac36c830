//! Writing outputs atomically: a temporary file in the target folder, synced, then renamed, so a
//! killed run never leaves a half-written file behind.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Write bytes to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(data).map_err(io)?;
    // Temporary files start private (0600); outputs are ordinary files.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(io)?;
    }
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Write named f32 tensors `(name, shape, values)` as a safetensors file, atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let bytes = tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    write_raw(path, safetensors::Dtype::F32, tensors.iter().map(|(n, s, _)| (n, s)), bytes, metadata)
}

/// Write named boolean tensors (masks; `torch.bool` when loaded by PyTorch) as a safetensors file,
/// atomically.
pub fn write_bool_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<bool>)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let bytes = tensors.iter().map(|(_, _, v)| v.iter().map(|&b| u8::from(b)).collect()).collect();
    write_raw(path, safetensors::Dtype::BOOL, tensors.iter().map(|(n, s, _)| (n, s)), bytes, metadata)
}

/// Tensors of one dtype given as (name, shape) and their little-endian bytes.
fn write_raw<'a>(
    path: &Path,
    dtype: safetensors::Dtype,
    heads: impl Iterator<Item = (&'a String, &'a Vec<usize>)>,
    bytes: Vec<Vec<u8>>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let bad = |reason: String| Error::Safetensors { path: path.to_path_buf(), reason };
    let views = heads
        .zip(&bytes)
        .map(|((name, shape), b)| {
            safetensors::tensor::TensorView::new(dtype, shape.clone(), b)
                .map(|v| (name.clone(), v))
                .map_err(|e| bad(format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let data = safetensors::serialize(views, Some(metadata)).map_err(|e| bad(e.to_string()))?;
    write_atomic(path, &data)
}
