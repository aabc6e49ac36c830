//! The precision of the frozen weights' matrix products (`train.precision`, `--precision`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `f32` everywhere, or mixed precision `bf16`: the products of frozen projections take bf16
/// inputs (weights and activations rounded to nearest even) with f32 sums, forward and, in
/// training, backward, as PyTorch's `torch.autocast(dtype=torch.bfloat16)` runs linear layers;
/// trainable parameters, their gradients, optimiser state, normalisations, softmax and losses
/// stay f32. On the CPU backend; fast where the CPU has AMX or AVX512_BF16
/// ([`speechtune_kernels::bf16::native`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "fp16" | "f16" | "float16" => Err(format!(
                "precision {s:?}: fp16 needs a GPU's tensor cores, which this toolkit does not drive yet; \
                 use bf16 (mixed precision on the CPU) or f32"
            )),
            _ => Err(format!("precision {s:?}: expected f32 or bf16")),
        }
    }
}

impl TryFrom<String> for Precision {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Precision> for String {
    fn from(p: Precision) -> String {
        p.to_string()
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Precision;

    #[test]
    fn parses_names_and_refuses_fp16_with_a_reason() {
        assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
        assert_eq!("BFloat16".parse::<Precision>(), Ok(Precision::Bf16));
        assert_eq!("fp32".parse::<Precision>(), Ok(Precision::F32));
        assert!("fp16".parse::<Precision>().unwrap_err().contains("GPU"));
        assert!("int8".parse::<Precision>().unwrap_err().contains("expected f32 or bf16"));
        assert_eq!(Precision::Bf16.to_string(), "bf16");
    }
}
