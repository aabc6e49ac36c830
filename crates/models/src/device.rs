//! Choosing where models run: `cpu` (burn's flex backend) or, when built with the `cuda`
//! feature, `cuda` / `cuda:N`.

use burn::prelude::*;

use crate::{Error, Result};

/// Parse a device name. `None` picks the first GPU in a `cuda` build, the CPU otherwise.
pub fn parse_device(spec: Option<&str>) -> Result<Device> {
    match spec.unwrap_or(if cfg!(feature = "cuda") { "cuda" } else { "cpu" }) {
        "cpu" => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        s if s == "cuda" || s.starts_with("cuda:") => {
            let index = s.strip_prefix("cuda:").map(|i| i.parse::<usize>()).transpose();
            let index = index.map_err(|_| Error::Input(format!("bad device \"{s}\": expected cuda:N")))?;
            Ok(Device::cuda(index.unwrap_or(0)))
        }
        other => Err(Error::Input(format!(
            "unknown device \"{other}\": use cpu{}",
            if cfg!(feature = "cuda") { ", cuda or cuda:N" } else { " (build with --features cuda for GPUs)" }
        ))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_is_always_available_and_unknown_names_are_explained() {
        assert!(super::parse_device(Some("cpu")).is_ok());
        let e = super::parse_device(Some("tpu")).unwrap_err().to_string();
        assert!(e.contains("\"tpu\"") && e.contains("cpu"), "{e}");
    }
}
