//! Parity with transformers 4.46.3: every hidden state of every fixture (tests/fixtures, made by
//! scripts/make_fixtures.py) within 1e-4, for one utterance and for a padded batch of two.

mod common;

use common::{fixtures, max_abs_diff, reference, values};
use speechtune_audio::logmel::{LogMelConfig, log_mel, mel_filters};
use speechtune_models::burn::prelude::*;
use speechtune_models::{ModelInput, Upstream, UpstreamModel};

const TOL: f32 = 1e-4;

/// (fixture, model_type)
const MODELS: [(&str, &str); 10] = [
    ("wav2vec2-base", "wav2vec2"),
    ("wav2vec2-base-bin", "wav2vec2"),
    ("wav2vec2-xlsr", "wav2vec2"),
    ("hubert-base", "hubert"),
    ("hubert-large", "hubert"),
    ("data2vec-audio", "data2vec-audio"),
    ("wavlm-base", "wavlm"),
    ("wavlm-large", "wavlm"),
    ("whisper", "whisper"),
    ("whisper-audiocls", "whisper"),
];

fn device() -> Device {
    Device::flex()
}

/// Compare every hidden state of `waves` with `{key}.hidden_states.{i}`; returns the max diff.
fn check(name: &str, key: &str, waves: Vec<Vec<f32>>) -> f32 {
    let dir = fixtures().join(name);
    let reference = reference(&dir.join("reference.safetensors"));
    let dev = device();
    let up = Upstream::load(&dir, &dev).unwrap_or_else(|e| panic!("{name}: {e}"));
    let single = waves.len() == 1;
    let out = up.forward_waves(&waves, &dev).unwrap();
    let n_ref = reference.keys().filter(|k| k.starts_with(&format!("{key}.hidden_states."))).count();
    assert_eq!(out.hidden_states.len(), n_ref, "{name}: number of hidden states");
    let mut worst = 0.0f32;
    for (i, h) in out.hidden_states.iter().enumerate() {
        let want = &reference[&format!("{key}.hidden_states.{i}")];
        let dims = h.dims();
        let got_shape: Vec<usize> = if single { dims[1..].to_vec() } else { dims.to_vec() };
        let d = max_abs_diff(&format!("{name} {key} hidden_states.{i}"), &got_shape, &values(h), want);
        assert!(d <= TOL, "{name} {key}: hidden_states.{i} differs by {d}");
        worst = worst.max(d);
    }
    worst
}

#[test]
fn every_model_matches_transformers_on_one_utterance() {
    for (name, model_type) in MODELS {
        let r = reference(&fixtures().join(name).join("reference.safetensors"));
        let d = check(name, "single", vec![r["single.raw"].1.clone()]);
        println!("single  {name:<17} {model_type:<15} max abs diff {d:.2e}");
    }
}

#[test]
fn every_model_matches_transformers_on_a_padded_batch() {
    for (name, model_type) in MODELS {
        let r = reference(&fixtures().join(name).join("reference.safetensors"));
        let waves = vec![r["batch.raw.0"].1.clone(), r["batch.raw.1"].1.clone()];
        assert_ne!(waves[0].len(), waves[1].len(), "{name}: batch items must differ in length");
        let d = check(name, "batch", waves);
        println!("batch   {name:<17} {model_type:<15} max abs diff {d:.2e}");
    }
}

#[test]
fn frontend_inputs_match_the_feature_extractors() {
    let dev = device();
    for (name, _) in MODELS {
        let dir = fixtures().join(name);
        let r = reference(&dir.join("reference.safetensors"));
        let up = Upstream::load(&dir, &dev).unwrap();
        let waves = vec![r["batch.raw.0"].1.clone(), r["batch.raw.1"].1.clone()];
        let (got, dims, key) = match up.frontend.prepare(&waves, &dev).unwrap() {
            ModelInput::Waveform { samples, lengths } => {
                assert_eq!(lengths, vec![waves[0].len(), waves[1].len()]);
                (values(&samples), samples.dims().to_vec(), "batch.input_values")
            }
            ModelInput::LogMel { features, .. } => {
                (values(&features), features.dims().to_vec(), "batch.input_features")
            }
            ModelInput::CnnFeatures { .. } => unreachable!("the front-end prepares audio"),
        };
        let d = max_abs_diff(name, &dims, &got, &r[key]);
        assert!(d <= TOL, "{name}: {key} differs by {d}");
    }
}

#[test]
fn whisper_logmel_matches_feature_extractor_at_30_s() {
    let r = reference(&fixtures().join("logmel/reference.safetensors"));
    let raw = &r["raw"].1;
    for n_mels in [80usize, 128] {
        let filters = mel_filters(201, n_mels, 16000);
        let flat: Vec<f32> = filters.iter().flatten().map(|&v| v as f32).collect();
        let d = max_abs_diff("filters", &[201, n_mels], &flat, &r[&format!("mel{n_mels}.filters")]);
        assert!(d < 1e-7, "mel filters ({n_mels}) differ by {d}");

        let m = log_mel(raw, &LogMelConfig::whisper(n_mels));
        assert_eq!((m.n_mels, m.frames), (n_mels, 3000));
        let head: Vec<f32> = (0..n_mels).flat_map(|i| m.data[i * 3000..i * 3000 + 200].to_vec()).collect();
        let d = max_abs_diff("head", &[n_mels, 200], &head, &r[&format!("mel{n_mels}.head")]);
        let tail = r[&format!("mel{n_mels}.tail")].1[0];
        let dt = (0..n_mels)
            .flat_map(|i| m.data[i * 3000 + 200..(i + 1) * 3000].to_vec())
            .map(|v| (v - tail).abs())
            .fold(0.0f32, f32::max);
        println!("log-mel {n_mels} mels: max abs diff {d:.2e} (audio frames), {dt:.2e} (padding)");
        assert!(d <= TOL && dt <= TOL, "log-mel {n_mels}: {d} / {dt}");
    }
}

#[test]
fn gradients_reach_the_first_convolution() {
    let dev = device().autodiff();
    for (name, _) in MODELS {
        let dir = fixtures().join(name);
        let r = reference(&dir.join("reference.safetensors"));
        let up = Upstream::load(&dir, &dev).unwrap();
        let out = up.forward_waves(&[r["single.raw"].1.clone()], &dev).unwrap();
        let loss = out.hidden_states.last().unwrap().clone().powf_scalar(2.0).mean();
        let grads = loss.backward();
        let w = match &up.model {
            UpstreamModel::Ssl(m) => m.feature_encoder.layers[0].conv.weight.val(),
            UpstreamModel::Whisper(m) => m.conv1.weight.val(),
        };
        let g = values(&w.grad(&grads).unwrap_or_else(|| panic!("{name}: no gradient on the first conv")));
        let norm = g.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(norm.is_finite() && norm > 1e-8, "{name}: first-conv gradient norm {norm}");
    }
}

#[test]
fn tiny_builtin_upstream_is_seeded_and_well_scaled() {
    let dev = device();
    let wave = reference(&fixtures().join("wav2vec2-base/reference.safetensors"))["single.raw"].1.clone();
    let a = Upstream::tiny(7, &dev).unwrap();
    let out = a.forward_waves(std::slice::from_ref(&wave), &dev).unwrap();
    assert_eq!(out.hidden_states.len(), 5);
    assert_eq!(out.hidden_states[0].dims(), [1, 4, 128]); // 1600 samples at 320 per frame
    for h in &out.hidden_states {
        let v = values(h);
        let rms = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        assert!((0.3..3.0).contains(&rms), "rms {rms}");
    }
    let same = Upstream::tiny(7, &dev).unwrap().forward_waves(std::slice::from_ref(&wave), &dev).unwrap();
    assert_eq!(values(&out.hidden_states[4]), values(&same.hidden_states[4]));
    let other = Upstream::tiny(8, &dev).unwrap().forward_waves(&[wave], &dev).unwrap();
    assert_ne!(values(&out.hidden_states[4]), values(&other.hidden_states[4]));
    let total: usize = a.model.parameter_breakdown().iter().map(|r| r.1).sum();
    assert!((500_000..800_000).contains(&total), "{total} parameters");
}

/// The embedded `builtin:tiny-pretrained` is the committed folder models/tiny-pretrained, read
/// from memory: the same front-end (normalising) and the same hidden states; not random weights.
#[test]
fn builtin_pretrained_upstream_is_the_committed_folder() {
    let dev = device();
    let wave = reference(&fixtures().join("wav2vec2-base/reference.safetensors"))["single.raw"].1.clone();
    let dir = fixtures().join("../../models/tiny-pretrained");
    let (embedded, _) = Upstream::tiny_pretrained_with_weights(&dev).unwrap();
    let folder = Upstream::load(&dir, &dev).unwrap();
    assert_eq!(embedded.frontend, folder.frontend);
    assert_eq!(embedded.frontend, speechtune_models::FrontEnd::Waveform { normalize: true });
    assert_eq!(embedded.prefix, "wav2vec2.");
    let a = embedded.forward_waves(std::slice::from_ref(&wave), &dev).unwrap();
    let b = folder.forward_waves(std::slice::from_ref(&wave), &dev).unwrap();
    assert_eq!(a.hidden_states.len(), 5);
    for (x, y) in a.hidden_states.iter().zip(&b.hidden_states) {
        assert_eq!(values(x), values(y));
    }
    let random = Upstream::tiny(0, &dev).unwrap().forward_waves(&[wave], &dev).unwrap();
    let (x, y) = (values(&a.hidden_states[4]), values(&random.hidden_states[4]));
    let d = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
    assert!(d > 0.1, "the pretrained model's last layer equals the random one's within {d}");
}

/// The native CPU feature encoder (used where the CNN is frozen) against burn's graph of the
/// same layers, on a padded batch: group-norm (base) and layer-norm (large/XLS-R) layouts, with
/// and without conv biases. And where each applies.
#[test]
fn native_cnn_equals_the_burn_graph() {
    let dev = device();
    for (name, _) in MODELS.iter().filter(|(_, t)| *t != "whisper") {
        let dir = fixtures().join(name);
        let r = reference(&dir.join("reference.safetensors"));
        let up = Upstream::load(&dir, &dev).unwrap();
        let UpstreamModel::Ssl(m) = &up.model else { unreachable!() };
        let wave = r["single.raw"].1.clone();
        let short = wave[..wave.len() * 2 / 3].to_vec();
        let ModelInput::Waveform { samples, .. } = up.frontend.prepare(&[wave, short], &dev).unwrap() else {
            unreachable!()
        };
        let graph_t = m.feature_encoder.forward(samples.clone()).swap_dims(1, 2);
        let (graph_shape, graph) = (graph_t.dims().to_vec(), values(&graph_t));
        let native_t = m.feature_encoder.forward_native(samples);
        let native = values(&native_t);
        let scale = graph.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let diff = max_abs_diff(name, &native_t.dims(), &native, &(graph_shape, graph));
        assert!(diff <= 1e-5 * scale.max(1.0), "{name}: native CNN differs by {diff} (values up to {scale})");
        assert!(m.feature_encoder.native_applies(&dev), "{name}: inference on the CPU");
    }
    // On an autodiff device the native path applies only while no CNN parameter trains.
    let ad = dev.autodiff();
    let up = Upstream::load(&fixtures().join("wav2vec2-base"), &ad).unwrap();
    let UpstreamModel::Ssl(m) = up.model else { unreachable!() };
    assert!(!m.feature_encoder.native_applies(&ad), "a trainable CNN needs burn's graph");
    assert!(m.feature_encoder.clone().no_grad().native_applies(&ad), "a frozen CNN runs natively");
}

/// Mixed precision (bf16 products, f32 sums) on every fixture: each hidden state within a few
/// bf16 roundings of transformers' f32 reference, relative to the state's scale; every
/// projection, the CNN (Whisper: its two convolutions) and the weight-normed positional
/// convolution, where the model has one, switched, but a first CNN layer with its group norm (folded into its weights) kept f32.
#[test]
fn bf16_hidden_states_stay_near_the_f32_reference() {
    let dev = device();
    for (name, _) in MODELS {
        let dir = fixtures().join(name);
        let r = reference(&dir.join("reference.safetensors"));
        let mut up = Upstream::load(&dir, &dev).unwrap();
        let projections = up.model.projections_mut().len();
        let cnn = 1; // the CNN, or Whisper's convolutional front-end
        let pos_conv = usize::from(
            matches!(&up.model, UpstreamModel::Ssl(m) if matches!(m.encoder.pos_conv, speechtune_models::ssl::PosConv::WeightNorm(_))),
        );
        assert_eq!(up.model.set_precision(speechtune_models::Precision::Bf16), projections + cnn + pos_conv, "{name}");
        assert_eq!(attention_in_bf16(&up.model), [true], "{name}: every layer's attention in bf16");
        if let UpstreamModel::Ssl(m) = &up.model {
            let packed: Vec<bool> = m.feature_encoder.bf16.as_ref().unwrap().iter().map(Option::is_some).collect();
            let want: Vec<bool> = m.feature_encoder.layers.iter().map(|l| l.group_norm.is_none()).collect();
            assert!(want[1..].iter().all(|&p| p), "{name}: only the first layer has a group norm");
            assert_eq!(packed, want, "{name}: every CNN layer in bf16 but a first with its group norm");
        }
        let out = up.forward_waves(&[r["single.raw"].1.clone()], &dev).unwrap();
        let mut worst = 0.0f32;
        for (i, h) in out.hidden_states.iter().enumerate() {
            let want = &r[&format!("single.hidden_states.{i}")].1;
            let got = values(h);
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max) / scale;
            assert!(d < 0.03, "{name}: hidden_states.{i} differs by {d} of its scale in bf16");
            worst = worst.max(d);
        }
        assert!(worst > 1e-4, "{name}: bf16 gave f32's values ({worst})");
        println!("bf16    {name:<17} max diff {worst:.2e} of the state's scale");
        assert_eq!(up.model.set_precision(speechtune_models::Precision::F32), 0, "{name}: back to f32");
        assert_eq!(attention_in_bf16(&up.model), [false], "{name}: back to f32");
        if let UpstreamModel::Ssl(m) = &up.model
            && let speechtune_models::ssl::PosConv::WeightNorm(c) = &m.encoder.pos_conv
        {
            assert!(c.bf16.is_none(), "{name}: the positional convolution back to f32");
        }
    }
}

/// The distinct values of the layers' `bf16_attention` flags.
fn attention_in_bf16(model: &UpstreamModel) -> Vec<bool> {
    let mut flags: Vec<bool> = match model {
        UpstreamModel::Ssl(m) => m.encoder.layers.iter().map(|l| l.attention.bf16_attention).collect(),
        UpstreamModel::Whisper(m) => m.layers.iter().map(|l| l.bf16_attention).collect(),
    };
    flags.dedup();
    flags
}
