//! The PEFT invariants, one table over architectures: output unchanged at initialisation,
//! only the method's own parameters change after an optimiser step, merging gives the same
//! output, and saved adapter state loads back exactly.

mod common;

use std::collections::HashMap;

use common::{fixtures, reference, values};
use speechtune_models::burn::module::{Module, ModuleVisitor, Param, ParamId};
use speechtune_models::burn::optim::{AdamWConfig, GradientsParams};
use speechtune_models::burn::prelude::*;
use speechtune_models::{Upstream, UpstreamOutput};
use speechtune_peft::LoraConfig;

const MODELS: [&str; 3] = ["wav2vec2-base", "wavlm-base", "whisper"];

/// Every float parameter's values, by id.
struct Snapshot(HashMap<ParamId, Vec<f32>>);

impl ModuleVisitor for Snapshot {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.insert(param.id, values(&param.val()));
    }
}

fn snapshot<M: Module>(m: &M) -> HashMap<ParamId, Vec<f32>> {
    let mut s = Snapshot(HashMap::new());
    m.visit(&mut s);
    s.0
}

fn run(up: &Upstream, wave: &[f32], device: &Device) -> UpstreamOutput {
    up.forward_waves(&[wave.to_vec()], device).unwrap()
}

fn max_diff(a: &UpstreamOutput, b: &UpstreamOutput) -> f32 {
    a.hidden_states
        .iter()
        .zip(&b.hidden_states)
        .map(|(x, y)| values(x).iter().zip(values(y)).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max))
        .fold(0.0, f32::max)
}

/// A fixture's upstream with every pretrained weight frozen, and its test waveform.
fn frozen(name: &str, device: &Device) -> (Upstream, Vec<f32>) {
    let dir = fixtures().join(name);
    let wave = reference(&dir.join("reference.safetensors"))["single.raw"].1.clone();
    let mut up = Upstream::load(&dir, device).unwrap();
    up.model = up.model.no_grad();
    (up, wave)
}

/// One AdamW step on a loss over the last hidden state; returns the parameters it changed.
fn one_step(up: &mut Upstream, wave: &[f32], device: &Device) -> Vec<ParamId> {
    let before = snapshot(&up.model);
    let loss = run(up, wave, device).hidden_states.last().unwrap().clone().powf_scalar(2.0).mean();
    let grads = GradientsParams::from_grads(loss.backward(), &up.model);
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).with_epsilon(1e-8).init();
    up.model = optim.step(1e-2, up.model.clone(), grads);
    let after = snapshot(&up.model);
    before.keys().filter(|id| before[*id] != after[*id]).copied().collect()
}

#[test]
fn lora_invariants() {
    let device = Device::flex().autodiff();
    for name in MODELS {
        let (mut up, wave) = frozen(name, &device);
        let plain = run(&up, &wave, &device);

        let cfg = LoraConfig { r: 4, lora_alpha: 8.0, ..LoraConfig::default() };
        let attached = up.model.attach_lora(&cfg, &device).unwrap();
        assert_eq!(attached.len(), 4, "{name}: q and v in 2 layers: {attached:?}");
        assert_eq!(max_diff(&plain, &run(&up, &wave, &device)), 0.0, "{name}: LoRA changes the output at init");

        let lora_ids: Vec<ParamId> =
            up.model.projections().iter().filter_map(|p| p.lora.as_ref()).flat_map(|l| [l.a.id, l.b.id]).collect();
        let changed = one_step(&mut up, &wave, &device);
        assert!(!changed.is_empty(), "{name}: nothing trained");
        assert!(changed.iter().all(|id| lora_ids.contains(id)), "{name}: a frozen parameter changed");
        let trained = run(&up, &wave, &device);
        assert!(max_diff(&plain, &trained) > 1e-4, "{name}: the step did not change the output");

        // Save → load into fresh LoRA layers: identical output.
        let state = up.model.lora_state(&up.prefix);
        assert_eq!(state.len(), 8);
        assert!(
            state[0].0.starts_with(&format!("base_model.model.{}", up.prefix))
                && state[0].0.ends_with(".lora_A.weight")
        );
        let map: HashMap<String, (Vec<usize>, Vec<f32>)> = state.into_iter().map(|(n, s, v)| (n, (s, v))).collect();
        let (mut fresh, _) = frozen(name, &device);
        fresh.model.attach_lora(&cfg, &device).unwrap();
        fresh.model.load_lora_state(&fresh.prefix.clone(), &map).unwrap();
        assert_eq!(max_diff(&trained, &run(&fresh, &wave, &device)), 0.0, "{name}: save/load round trip");

        // Merging where the frozen products run in bf16: each merged weight is packed anew, its
        // values the bf16 rounding of weight + update.
        let mut bf = up.clone();
        assert!(bf.model.set_precision(speechtune_models::Precision::Bf16) > 0, "{name}: frozen products in bf16");
        let want: Vec<(Vec<f32>, Vec<f32>)> = bf
            .model
            .projections()
            .iter()
            .filter_map(|p| p.lora.as_ref().map(|l| (values(&p.weight_f32()), values(&(p.weight_f32() + l.delta())))))
            .collect();
        bf.model.merge_lora();
        let got: Vec<Vec<f32>> =
            bf.model.projections().iter().filter(|p| p.bf16.is_some()).map(|p| values(&p.weight_f32())).collect();
        use speechtune_kernels::bf16::{from_bf16, to_bf16};
        let mut moved = false;
        for (before, merged) in &want {
            let rounded: Vec<f32> = merged.iter().map(|&v| from_bf16(to_bf16(v))).collect();
            assert!(got.contains(&rounded), "{name}: a merged weight's bf16 packing");
            moved |= rounded != *before;
        }
        assert!(moved, "{name}: the merge changed a weight");
        assert!(bf.model.projections().iter().all(|p| p.lora.is_none() && p.bf16.is_some()), "{name}: all still bf16");

        // Merging folds the update into the base weights.
        up.model.merge_lora();
        assert!(up.model.projections().iter().all(|p| p.lora.is_none()));
        let merged = max_diff(&trained, &run(&up, &wave, &device));
        assert!(merged < 1e-5, "{name}: merged output differs by {merged}");
    }
}

#[test]
fn lora_targets_that_match_nothing_are_an_error() {
    let device = Device::flex();
    let mut up = Upstream::load(&fixtures().join("wav2vec2-base"), &device).unwrap();
    let cfg =
        LoraConfig { target_modules: speechtune_peft::Targets::Names(vec!["query".into()]), ..LoraConfig::default() };
    let e = up.model.attach_lora(&cfg, &device).unwrap_err().to_string();
    assert!(e.contains("\"query\"") && e.contains("encoder.layers.0.attention.q_proj"), "{e}");
    let regex = LoraConfig {
        target_modules: speechtune_peft::Targets::Regex(r".*layers\.1\..*_dense".into()),
        ..LoraConfig::default()
    };
    assert_eq!(
        up.model.attach_lora(&regex, &device).unwrap(),
        ["encoder.layers.1.feed_forward.intermediate_dense", "encoder.layers.1.feed_forward.output_dense"]
    );
}

#[test]
fn adapter_invariants() {
    use speechtune_peft::{AdapterConfig, Placement};
    let device = Device::flex().autodiff();
    for name in MODELS {
        let (mut up, wave) = frozen(name, &device);
        let plain = run(&up, &wave, &device);
        let pfeiffer = AdapterConfig { placement: Placement::Pfeiffer, reduction_factor: 4 };
        assert_eq!(up.model.clone().attach_adapters(&pfeiffer, &device), 2, "{name}: one per layer");
        let cfg = AdapterConfig { placement: Placement::Houlsby, reduction_factor: 4 };
        assert_eq!(up.model.attach_adapters(&cfg, &device), 4, "{name}: two per layer");
        assert_eq!(max_diff(&plain, &run(&up, &wave, &device)), 0.0, "{name}: adapters change the output at init");
        let adapter_ids: Vec<ParamId> = up
            .model
            .adapters()
            .iter()
            .flat_map(|(_, a)| {
                [a.down.weight.id, a.up.weight.id, a.down.bias.as_ref().unwrap().id, a.up.bias.as_ref().unwrap().id]
            })
            .collect();
        let changed = one_step(&mut up, &wave, &device);
        assert!(
            !changed.is_empty() && changed.iter().all(|id| adapter_ids.contains(id)),
            "{name}: {} changed",
            changed.len()
        );
        assert!(max_diff(&plain, &run(&up, &wave, &device)) > 1e-4, "{name}: the step did not change the output");
    }
}

/// Ids of the parameters that require gradients.
struct Trainable(Vec<ParamId>);

impl ModuleVisitor for Trainable {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if param.val().is_require_grad() {
            self.0.push(param.id);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Method {
    ConvAdapter,
    Prefix,
    PrefixMlp,
    Bitfit,
}

impl Method {
    /// Attach to a frozen upstream; returns how many modules (or bias values) were added.
    fn attach(self, up: &mut Upstream, device: &Device) -> usize {
        use speechtune_peft::{ConvAdapterConfig, PrefixConfig};
        let prefix = |mlp| PrefixConfig { num_virtual_tokens: 3, prefix_projection: mlp, encoder_hidden_size: 16 };
        match self {
            Method::ConvAdapter => up.model.attach_conv_adapters(&ConvAdapterConfig::default(), device),
            Method::Prefix => up.model.attach_prefixes(&prefix(false), device),
            Method::PrefixMlp => up.model.attach_prefixes(&prefix(true), device),
            Method::Bitfit => up.model.train_biases_only(),
        }
    }

    /// Whether a trainable parameter's path belongs to the method.
    fn owns(self, path: &str) -> bool {
        match self {
            Method::ConvAdapter => path.contains(".conv_adapter."),
            Method::Prefix | Method::PrefixMlp => path.contains(".prefix."),
            Method::Bitfit => path.ends_with(".bias"),
        }
    }

    fn identity_at_init(self) -> bool {
        matches!(self, Method::ConvAdapter | Method::Bitfit)
    }
}

#[test]
fn conv_adapter_prefix_and_bitfit_invariants() {
    use speechtune_models::state::{load_named, named_parameters};
    let device = Device::flex().autodiff();
    for name in MODELS {
        for method in [Method::ConvAdapter, Method::Prefix, Method::PrefixMlp, Method::Bitfit] {
            let what = format!("{name} / {method:?}");
            let (mut up, wave) = frozen(name, &device);
            let plain = run(&up, &wave, &device);
            let added = method.attach(&mut up, &device);
            match method {
                Method::Bitfit => assert!(added > 100, "{what}: only {added} bias values train"),
                _ => assert_eq!(added, 2, "{what}: one per layer"),
            }
            let at_init = max_diff(&plain, &run(&up, &wave, &device));
            if method == Method::Bitfit {
                // Training the CNN's biases moves the CNN from the native CPU path to burn's
                // graph: the same function, rounded differently.
                assert!(at_init < 1e-5, "{what}: output changed at init by {at_init}");
            } else if method.identity_at_init() {
                assert_eq!(at_init, 0.0, "{what}: output changed at init");
            } else {
                assert!(at_init > 0.0, "{what}: a prefix must change attention");
            }

            let trainable = named_parameters(&up.model, "", true);
            assert!(!trainable.is_empty(), "{what}: nothing trainable");
            for (path, _, _) in &trainable {
                assert!(method.owns(path), "{what}: {path} trains but is not the method's");
            }
            if let Method::Bitfit = method {
                assert_eq!(trainable.iter().map(|(_, s, _)| s.iter().product::<usize>()).sum::<usize>(), added);
            }
            let mut ids = Trainable(Vec::new());
            up.model.visit(&mut ids);
            let before = run(&up, &wave, &device);
            let changed = one_step(&mut up, &wave, &device);
            assert!(!changed.is_empty(), "{what}: nothing trained");
            assert!(changed.iter().all(|id| ids.0.contains(id)), "{what}: a frozen parameter changed");
            let trained = run(&up, &wave, &device);
            assert!(max_diff(&before, &trained) > 1e-5, "{what}: the step did not change the output");

            // Save → load into a model built the same way (fresh random method weights).
            let state: HashMap<String, (Vec<usize>, Vec<f32>)> =
                named_parameters(&up.model, "", true).into_iter().map(|(n, s, v)| (n, (s, v))).collect();
            let (mut fresh, _) = frozen(name, &device);
            method.attach(&mut fresh, &device);
            if !matches!(method, Method::Bitfit) {
                assert!(max_diff(&trained, &run(&fresh, &wave, &device)) > 0.0, "{what}: fresh model already equal");
            }
            fresh.model = load_named(fresh.model, "", &state, std::path::Path::new("state")).unwrap();
            assert_eq!(max_diff(&trained, &run(&fresh, &wave, &device)), 0.0, "{what}: save/load round trip");
        }
    }
}

#[test]
fn loading_state_into_a_differently_built_model_names_the_tensor() {
    use speechtune_models::state::load_named;
    let device = Device::flex();
    let (up, _) = frozen("wav2vec2-base", &device);
    let bad: HashMap<String, (Vec<usize>, Vec<f32>)> = [
        ("Ssl.encoder.layers.0.conv_adapter.up.bias".to_string(), (vec![3], vec![0.0; 3])),
        ("Ssl.projection.bias".to_string(), (vec![2], vec![0.0; 2])),
    ]
    .into();
    let e = load_named(up.model, "", &bad, std::path::Path::new("run/upstream.safetensors")).unwrap_err().to_string();
    assert!(e.contains("run/upstream.safetensors"), "{e}");
    assert!(e.contains("Ssl.projection.bias has shape [2], the model expects [32]"), "{e}");
    assert!(e.contains("conv_adapter.up.bias"), "{e}");
}

#[test]
fn s3_router_masks_keep_the_top_scores_and_train_only_the_scores() {
    use speechtune_peft::mask::kept;
    use speechtune_peft::{MaskConfig, ScoreInit};
    let device = Device::flex().autodiff();
    for name in MODELS {
        // Keeping everything changes nothing.
        let (mut up, wave) = frozen(name, &device);
        let plain = run(&up, &wave, &device);
        let all = MaskConfig { prune_rate: 1.0, ..MaskConfig::default() };
        assert_eq!(up.model.attach_masks(&all).len(), 12, "{name}: 6 projections × 2 layers");
        assert_eq!(max_diff(&plain, &run(&up, &wave, &device)), 0.0, "{name}");

        // fix_attn leaves q, k, v, out alone.
        let (mut up, _) = frozen(name, &device);
        let ffn_only = up.model.attach_masks(&MaskConfig { fix_attn: true, ..MaskConfig::default() });
        assert_eq!(ffn_only.len(), 4, "{name}: {ffn_only:?}");

        // prune_rate 0.9 keeps exactly 90% per layer, and weight_rank starts as magnitude pruning.
        let (mut up, wave) = frozen(name, &device);
        up.model.attach_masks(&MaskConfig { prune_rate: 0.9, score_init: ScoreInit::WeightRank, fix_attn: false });
        for p in up.model.projections() {
            let m = values(&p.mask.as_ref().unwrap().hard());
            let w = values(&p.base.weight.val());
            let ones = m.iter().filter(|&&x| x == 1.0).count();
            assert_eq!(ones, kept(w.len(), 0.9), "{name} {}", p.name);
            assert!(m.iter().all(|&x| x == 0.0 || x == 1.0));
            let smallest_kept =
                w.iter().zip(&m).filter(|(_, m)| **m == 1.0).map(|(w, _)| w.abs()).fold(f32::MAX, f32::min);
            let largest_dropped =
                w.iter().zip(&m).filter(|(_, m)| **m == 0.0).map(|(w, _)| w.abs()).fold(0.0, f32::max);
            assert!(smallest_kept >= largest_dropped, "{name} {}: not magnitude order", p.name);
        }
        let pruned = run(&up, &wave, &device);
        assert!(max_diff(&plain, &pruned) > 1e-4, "{name}: pruning 10% must change the output");

        // Straight-through: the scores get gradients and are the only thing that changes.
        let scores: Vec<ParamId> = up.model.projections().iter().map(|p| p.mask.as_ref().unwrap().scores.id).collect();
        let changed = one_step(&mut up, &wave, &device);
        assert!(!changed.is_empty(), "{name}: no score moved");
        assert!(changed.iter().all(|id| scores.contains(id)), "{name}: a weight changed");
    }
}
