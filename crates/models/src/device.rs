//! Choosing where models run: `cpu` (burn's flex backend); when built with the `cuda`
//! feature, `cuda` / `cuda:N`; with the `rocm` feature (AMD GPUs through HIP), `rocm` /
//! `rocm:N`; when built with the `vulkan` feature (burn's wgpu backend pinned
//! to Vulkan, SPIR-V kernels: NVIDIA, AMD and Intel GPUs, and a build that needs no download),
//! `vulkan` / `vulkan:N` (the N-th discrete GPU).

use burn::prelude::*;

use crate::{Error, Result};

/// The device names this build accepts, for messages.
fn accepted() -> String {
    let mut names = vec!["cpu"];
    for (on, kinds) in [
        (cfg!(feature = "cuda"), ["cuda", "cuda:N"]),
        (cfg!(feature = "rocm"), ["rocm", "rocm:N"]),
        (cfg!(feature = "vulkan"), ["vulkan", "vulkan:N"]),
    ] {
        if on {
            names.extend(kinds);
        }
    }
    if names.len() == 1 {
        return "cpu (build with --features vulkan, cuda or rocm for GPUs)".into();
    }
    names.join(", ")
}

/// Parse a device name. `None` picks the first GPU in a `cuda` or `vulkan` build, the CPU
/// otherwise.
pub fn parse_device(spec: Option<&str>) -> Result<Device> {
    let default = if cfg!(feature = "cuda") {
        "cuda"
    } else if cfg!(feature = "rocm") {
        "rocm"
    } else if cfg!(feature = "vulkan") {
        "vulkan"
    } else {
        "cpu"
    };
    match spec.unwrap_or(default) {
        "cpu" => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        s if s == "cuda" || s.starts_with("cuda:") => {
            let index = s.strip_prefix("cuda:").map(|i| i.parse::<usize>()).transpose();
            let index = index.map_err(|_| Error::Input(format!("bad device \"{s}\": expected cuda:N")))?;
            Ok(Device::cuda(index.unwrap_or(0)))
        }
        #[cfg(feature = "rocm")]
        s if s == "rocm" || s.starts_with("rocm:") => {
            let index = s.strip_prefix("rocm:").map(|i| i.parse::<usize>()).transpose();
            let index = index.map_err(|_| Error::Input(format!("bad device \"{s}\": expected rocm:N")))?;
            Ok(Device::rocm(index.unwrap_or(0)))
        }
        #[cfg(feature = "vulkan")]
        s if s == "vulkan" || s.starts_with("vulkan:") => {
            let index = s.strip_prefix("vulkan:").map(|i| i.parse::<usize>()).transpose();
            let index = index.map_err(|_| Error::Input(format!("bad device \"{s}\": expected vulkan:N")))?;
            let device = Device::vulkan(burn::tensor::DeviceKind::DiscreteGpu(index.unwrap_or(0)));
            // burn panics (on a worker thread's closed channel) when no adapter comes up: say why,
            // without the panic's own report.
            let report = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let probe = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Tensor::<1>::zeros([1], &device).into_data();
            }));
            std::panic::set_hook(report);
            match probe {
                Ok(()) => Ok(device),
                Err(_) => Err(Error::Input(format!(
                    "device \"{s}\": no Vulkan GPU found (needs the Vulkan loader, libvulkan1, and a GPU driver with \
                     Vulkan support; VK_DRIVER_FILES may point at the driver's ICD file)"
                ))),
            }
        }
        other => Err(Error::Input(format!("unknown device \"{other}\": use {}", accepted()))),
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
