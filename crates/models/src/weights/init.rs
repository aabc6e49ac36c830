//! transformers' initialisation of a new `Wav2Vec2ForPreTraining` (`_init_weights`), answered
//! tensor by tensor so that a model built from a config goes through the same loading code as
//! one built from a checkpoint. Draws are seeded by (seed, tensor name), so a model is a
//! function of its config and seed.

use speechtune_data::Rng;

/// How transformers initialises a tensor, decided from its name and shape. `earlier` returns the
/// shape of a tensor requested before this one (a bias's bound depends on its weight's fan-in).
pub(crate) fn transformers_values(
    seed: u64,
    range: f64,
    name: &str,
    shape: &[usize],
    earlier: &dyn Fn(&str) -> Option<Vec<usize>>,
) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let last = name.rsplit('.').next().unwrap_or(name);
    let module = name.rsplit_once('.').map(|(m, _)| m).unwrap_or("");
    let mut rng = Rng::new(seed ^ name_hash(name));
    let mut uniform =
        |lo: f64, hi: f64| -> Vec<f32> { (0..n).map(|_| (lo + (hi - lo) * rng.uniform()) as f32).collect() };
    let fan_in_of = |weight: &str| earlier(weight).map(|s| s.iter().skip(1).product::<usize>()).unwrap_or(1).max(1);
    // Positional conv: weight norm over the kernel axis. PyTorch's Conv1d default draws v; the
    // gain g starts as the norm of v, so the effective weight is v.
    if name.contains("pos_conv_embed") {
        return match last {
            "bias" => vec![0.0; n],
            "weight_v" | "original1" => {
                let b = 1.0 / ((shape[1] * shape[2]) as f64).sqrt();
                uniform(-b, b)
            }
            "weight_g" | "original0" => {
                let v_name = name.replace("weight_g", "weight_v").replace("original0", "original1");
                let v_shape = earlier(&v_name).expect("the positional conv's v is read before its g");
                let v = transformers_values(seed, range, &v_name, &v_shape, earlier);
                let (d, k) = (v_shape[0] * v_shape[1], v_shape[2]);
                (0..k).map(|j| (0..d).map(|i| (v[i * k + j] as f64).powi(2)).sum::<f64>().sqrt() as f32).collect()
            }
            _ => normal(&mut rng, n, range),
        };
    }
    if name == "masked_spec_embed" || name == "quantizer.codevectors" {
        return uniform(0.0, 1.0);
    }
    if module == "quantizer.weight_proj" {
        return if last == "bias" { vec![0.0; n] } else { normal(&mut rng, n, 1.0) };
    }
    // nn.Linear's own reset_parameters (project_hid, project_q) and transformers' choice for the
    // feature projection: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
    if matches!(module, "project_hid" | "project_q" | "feature_projection.projection") {
        let b = 1.0 / (fan_in_of(&format!("{module}.weight")) as f64).sqrt();
        return uniform(-b, b);
    }
    if name.contains("norm") && !name.contains("conv.") {
        return vec![if last == "weight" { 1.0 } else { 0.0 }; n];
    }
    if name.starts_with("feature_extractor.") {
        // kaiming_normal_ for conv weights; conv biases U(-k, k), k = sqrt(1 / fan_in).
        if last == "bias" {
            let b = 1.0 / (fan_in_of(&format!("{module}.weight")) as f64).sqrt();
            return uniform(-b, b);
        }
        let fan_in = shape.iter().skip(1).product::<usize>().max(1) as f64;
        return normal(&mut rng, n, (2.0 / fan_in).sqrt());
    }
    if last == "bias" { vec![0.0; n] } else { normal(&mut rng, n, range) }
}

fn normal(rng: &mut Rng, n: usize, std: f64) -> Vec<f32> {
    (0..n).map(|_| (rng.normal() * std) as f32).collect()
}

/// FNV-1a of a tensor name: decorrelates the draws of different tensors.
pub(crate) fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}
