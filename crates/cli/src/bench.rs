//! `speechtune bench [--task T]`: speechtune's side of `bench/run.sh` — the same work as
//! `bench/peer_pytorch.py` (wav2vec2-base with random weights), each task in its own process,
//! medians over timed runs after warm-ups, one JSON line per task.

use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::optim::GradientsParams;
use speechtune_models::burn::prelude::*;
use speechtune_models::burn::tensor::TensorData;
use speechtune_models::ssl::pretrain::{PretrainModel, Quantize, compute_mask_indices, sample_negative_indices};
use speechtune_models::weights::Weights;
use speechtune_models::{FrontEnd, ModelConfig, Upstream, UpstreamModel, UpstreamOutput, parse_device};
use speechtune_peft::LoraConfig;
use speechtune_tasks::{Featurizer, LinearHead, ctc_loss};
use speechtune_train::feature_cache::{CacheKind, FeatureCache};

/// The configuration of `Wav2Vec2Config()` in transformers: wav2vec2-base's shape.
const WAV2VEC2_BASE: &[u8] = br#"{"model_type": "wav2vec2"}"#;
/// whisper-base's encoder (transformers' `WhisperConfig` with the base model's sizes).
const WHISPER_BASE: &[u8] = br#"{"model_type": "whisper", "d_model": 512, "encoder_layers": 6,
    "encoder_attention_heads": 8, "encoder_ffn_dim": 2048, "num_mel_bins": 80, "decoder_layers": 6,
    "decoder_attention_heads": 8, "decoder_ffn_dim": 2048}"#;
const VOCAB: usize = 32;
const TARGET_LEN: usize = 40;

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Task {
    /// Inference, 1 × 10 s, every hidden state.
    #[value(name = "forward_1x10")]
    Forward1x10,
    /// Inference, 4 × 10 s.
    #[value(name = "forward_4x10")]
    Forward4x10,
    /// One training step: LoRA r = 8 on q, v + linear CTC head on the last layer, 2 × 5 s, AdamW.
    #[value(name = "lora_ctc_2x5")]
    LoraCtc2x5,
    /// The same step, paired with a PyTorch peer whose upstream dropout is off (speechtune's
    /// upstream has no dropout, so this is the same work on both sides; `lora_ctc_2x5`'s peer
    /// runs transformers' default dropout in train mode).
    #[value(name = "lora_ctc_2x5_nodropout")]
    LoraCtc2x5NoDropout,
    /// The LoRA step in a later epoch: the frozen CNN's features come from the cache that
    /// training fills in its first epoch (no PyTorch peer).
    #[value(name = "lora_ctc_2x5_cached")]
    LoraCtc2x5Cached,
    /// One training step: frozen upstream, softmax-weighted layer sum + linear CTC head, 2 × 5 s.
    #[value(name = "frozen_ws_2x5")]
    FrozenWs2x5,
    /// The same step in a later epoch, on hidden states from the cache (no PyTorch peer).
    #[value(name = "frozen_ws_2x5_cached")]
    FrozenWs2x5Cached,
    /// Inference, 1 × 10 s, with LoRA r = 8 (q, v) attached instead of merged (no peer): what
    /// merging saves (merged, the model is `forward_1x10`'s).
    #[value(name = "forward_1x10_lora")]
    Forward1x10Lora,
    /// Inference, whisper-base's encoder (random weights) on one 30-s window (3,000 log-mel
    /// frames, computed before the timed runs; the peer's are random), every hidden state.
    #[value(name = "whisper_encoder_1x30")]
    WhisperEncoder1x30,
    /// Matrix products alone, in the shapes of a wav2vec2-base forward over 1 × 10 s
    /// (`bench/gemm_shapes.json`): the throughput the rest is built on.
    #[value(name = "gemm")]
    Gemm,
    /// One wav2vec 2.0 pre-training step (`Wav2Vec2ForPreTraining`, wav2vec2-base's shape,
    /// transformers' initialisation), 2 × 10 s: span masks 0.65 × 10 and 100 distractors drawn
    /// each step, Gumbel quantizer, contrastive + diversity loss, AdamW; no dropout on either side.
    #[value(name = "pretrain_2x10")]
    Pretrain2x10,
    /// Not a timing: what mixed precision changes. Every hidden state of a 1 × 10 s forward in
    /// bf16 against f32 (max difference over the state's largest value), and the losses of five
    /// LoRA + CTC steps (`lora_ctc_2x5`'s) from the same start in both; the peer does the same
    /// under `torch.autocast`.
    #[value(name = "precision_cost")]
    PrecisionCost,
}

/// The matrix products of one wav2vec2-base forward over 1 × 10 s (499 frames), as
/// [name, times per forward, batch, m, k, n]; `bench/peer_pytorch.py` reads the same file.
/// Convolutions are counted as the products they amount to (channels-last, no im2col).
const GEMM_SHAPES: &str = include_str!("../../../bench/gemm_shapes.json");

impl Task {
    const ALL: [Task; 11] = [
        Task::Forward1x10,
        Task::Forward4x10,
        Task::LoraCtc2x5,
        Task::LoraCtc2x5NoDropout,
        Task::LoraCtc2x5Cached,
        Task::FrozenWs2x5,
        Task::FrozenWs2x5Cached,
        Task::Forward1x10Lora,
        Task::Gemm,
        Task::Pretrain2x10,
        Task::PrecisionCost,
    ];

    fn name(self) -> &'static str {
        match self {
            Task::Forward1x10 => "forward_1x10",
            Task::Forward4x10 => "forward_4x10",
            Task::LoraCtc2x5 => "lora_ctc_2x5",
            Task::LoraCtc2x5NoDropout => "lora_ctc_2x5_nodropout",
            Task::LoraCtc2x5Cached => "lora_ctc_2x5_cached",
            Task::FrozenWs2x5 => "frozen_ws_2x5",
            Task::FrozenWs2x5Cached => "frozen_ws_2x5_cached",
            Task::Forward1x10Lora => "forward_1x10_lora",
            Task::WhisperEncoder1x30 => "whisper_encoder_1x30",
            Task::Gemm => "gemm",
            Task::Pretrain2x10 => "pretrain_2x10",
            Task::PrecisionCost => "precision_cost",
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// One task in this process; without it every task runs, each in its own process.
    #[arg(long, value_enum)]
    pub task: Option<Task>,
    /// Timed runs per task (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// cpu; cuda / cuda:N or vulkan / vulkan:N in a build with that feature (default: its GPU).
    #[arg(long)]
    pub device: Option<String>,
    /// Training steps with burn's gradient checkpointing (`train.activation_checkpointing`).
    #[arg(long)]
    pub activation_checkpointing: bool,
    /// `bf16`: the frozen projections' products with bf16 inputs and f32 sums (forward and
    /// step tasks; the peer's `--precision bf16` runs under `torch.autocast`).
    #[arg(long, default_value = "f32")]
    pub precision: speechtune_models::Precision,
}

/// What trains in the step tasks: the upstream (LoRA inside it, or frozen), an optional
/// weighted layer sum, and the CTC head.
#[derive(Module, Debug)]
struct StepModel {
    upstream: UpstreamModel,
    featurizer: Option<Featurizer>,
    head: LinearHead,
}

impl StepModel {
    fn loss(&self, out: UpstreamOutput, targets: &[Vec<u32>]) -> Result<Tensor<1>> {
        let x = match &self.featurizer {
            Some(f) => f.forward(&out.hidden_states),
            None => out.hidden_states.last().cloned().context("the upstream returned no hidden state")?,
        };
        Ok(ctc_loss(self.head.forward(x), &out.frame_lengths, targets, 0).mean())
    }
}

/// The autodiff device of the step tasks, with gradient checkpointing when asked.
fn training(base: &Device, args: &Args) -> Device {
    let device = base.clone().autodiff();
    if args.activation_checkpointing { device.gradient_checkpointing() } else { device }
}

/// Reproducible noise, like `torch.randn` in the peer (values do not matter for timing).
fn noise(batch: usize, seconds: f64, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = speechtune_data::Rng::new(seed);
    let n = (seconds * 16000.0) as usize;
    (0..batch).map(|_| (0..n).map(|_| rng.normal() as f32).collect()).collect()
}

/// `precision_cost`: see [`Task::PrecisionCost`].
fn precision_cost(base: &Device) -> Result<serde_json::Value> {
    use speechtune_models::Precision;
    let frontend = FrontEnd::Waveform { normalize: false };
    let mut up = Upstream::random(WAV2VEC2_BASE, "wav2vec2-base (random)", 0, base)?;
    let waves = noise(1, 10.0, 1);
    let mut states = Vec::new();
    for precision in [Precision::F32, Precision::Bf16] {
        up.model.set_precision(precision);
        let out = up.model.forward(frontend.prepare(&waves, base)?)?;
        states.push(out.hidden_states.into_iter().map(values).collect::<Vec<_>>());
    }
    let hidden: Vec<f64> = states[0]
        .iter()
        .zip(&states[1])
        .map(|(a, b)| {
            let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
            a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max) / scale
        })
        .collect();
    let device = base.clone().autodiff();
    let waves = noise(2, 5.0, 1);
    let mut rng = speechtune_data::Rng::new(2);
    let targets: Vec<Vec<u32>> =
        (0..2).map(|_| (0..TARGET_LEN).map(|_| 1 + rng.below(VOCAB - 1) as u32).collect()).collect();
    let mut losses = Vec::new();
    for precision in [Precision::F32, Precision::Bf16] {
        device.seed(0);
        let up = Upstream::random(WAV2VEC2_BASE, "wav2vec2-base (random)", 0, &device)?;
        let mut upstream = up.model.no_grad();
        upstream.attach_lora(&LoraConfig::default(), &device)?;
        upstream.set_precision(precision);
        let d = upstream.hidden_size();
        let mut model = StepModel { upstream, featurizer: None, head: LinearHead::new(d, VOCAB, &device) };
        let mut optim = speechtune_train::optim::adamw(1e-8, 1e-4);
        let mut run = Vec::new();
        for _ in 0..5 {
            let loss = model.loss(model.upstream.forward(frontend.prepare(&waves, &device)?)?, &targets)?;
            run.push(loss.clone().into_scalar::<f32>() as f64);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-4, model, grads);
        }
        run.push(
            model.loss(model.upstream.forward(frontend.prepare(&waves, &device)?)?, &targets)?.into_scalar::<f32>()
                as f64,
        );
        losses.push(run);
    }
    Ok(serde_json::json!({
        "task": "precision_cost",
        "hidden_state_max_rel_diff": hidden,
        "losses_f32": losses[0],
        "losses_bf16": losses[1],
        "bf16_kernel": speechtune_kernels::bf16::kernel_name(),
        "device": format!("{base:?}"),
    }))
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default()
}

fn run_task(task: Task, args: &Args) -> Result<serde_json::Value> {
    let base = parse_device(args.device.as_deref())?;
    // The peer passes the waveform as it is, without per-utterance normalisation.
    let frontend = FrontEnd::Waveform { normalize: false };
    let mut runs = Vec::new();
    // Step tasks: forward (to the loss), backward, optimiser update.
    let mut phases: [Vec<f64>; 3] = Default::default();
    let mut shapes = Vec::new();
    match task {
        Task::PrecisionCost => return precision_cost(&base),
        Task::Gemm => {
            let shape_list: Vec<(String, usize, usize, usize, usize, usize)> =
                serde_json::from_str(GEMM_SHAPES).context("bench/gemm_shapes.json")?;
            for (name, count, batch, m, k, n) in shape_list {
                let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
                let a = Tensor::<3>::random([batch, m, k], normal, &base);
                let b = Tensor::<3>::random([batch, k, n], normal, &base);
                let mut times = Vec::new();
                for i in 0..args.warmup + args.repeats {
                    if i == args.warmup {
                        perf_control("enable");
                    }
                    let t = Instant::now();
                    let c = a.clone().matmul(b.clone());
                    // Wait for the result (asynchronous backends).
                    let _ = c.slice([0..1, 0..1, 0..1]).into_scalar::<f32>();
                    if i >= args.warmup {
                        times.push(t.elapsed().as_secs_f64());
                    }
                }
                perf_control("disable");
                let s = median(&times);
                let flop = 2.0 * (batch * m * k * n) as f64;
                shapes.push(serde_json::json!({
                    "name": name, "per_forward": count, "batch": batch, "m": m, "k": k, "n": n,
                    "median_s": s, "gflops": flop / s / 1e9,
                }));
                // The task's time: what these products cost in one forward.
                runs.push(s * count as f64);
            }
            runs = vec![runs.iter().sum()];
        }
        Task::Pretrain2x10 => {
            let device = training(&base, args);
            let name = std::path::Path::new("wav2vec2-base (pre-training)");
            let ModelConfig::Ssl(cfg) = ModelConfig::from_json(WAV2VEC2_BASE, name)? else {
                anyhow::bail!("wav2vec2-base is an SSL configuration");
            };
            let mut weights = Weights::transformers_init(0, cfg.initializer_range);
            let mut model = PretrainModel::load(&cfg, &mut weights, &device)?;
            let mut optim = speechtune_train::optim::adamw(1e-8, 1e-4);
            let waves = noise(2, 10.0, 1);
            let len = waves[0].len();
            let flat: Vec<f32> = waves.concat();
            let frames = model.frames_for(len);
            let mut rng = speechtune_data::Rng::new(3);
            for i in 0..args.warmup + args.repeats {
                if i == args.warmup {
                    perf_control("enable");
                }
                let t = Instant::now();
                // Masks and distractors are drawn inside the step, as the peer does.
                let mut mask = compute_mask_indices(&mut rng, frames, &[frames; 2], 0.65, 10, 2);
                let negatives = sample_negative_indices(&mut rng, frames, &mut mask, 100);
                let samples = Tensor::<2>::from_data(TensorData::new(flat.clone(), [2, len]), &device);
                let quantize = Quantize::Gumbel { temperature: 2.0, rng: &mut rng };
                // transformers' loss: contrastive + 0.1 × diversity, no feature penalty.
                let loss = model.forward(samples, &mask, &negatives, quantize, 1.0)?.loss(0.1, 0.0);
                let _ = loss.clone().into_scalar::<f32>();
                let forward = t.elapsed().as_secs_f64();
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                let backward = t.elapsed().as_secs_f64();
                model = optim.step(1e-4, model, grads);
                let _ = model.project_q.weight.val().sum().into_scalar::<f32>();
                let total = t.elapsed().as_secs_f64();
                if i >= args.warmup {
                    record_step(&mut runs, &mut phases, [forward, backward, total]);
                }
            }
            perf_control("disable");
        }
        Task::Forward1x10 | Task::Forward4x10 | Task::Forward1x10Lora => {
            let mut up = Upstream::random(WAV2VEC2_BASE, "wav2vec2-base (random)", 0, &base)?;
            if task == Task::Forward1x10Lora {
                up.model.attach_lora(&LoraConfig::default(), &base)?;
            }
            up.model.set_precision(args.precision);
            let waves = noise(if task == Task::Forward4x10 { 4 } else { 1 }, 10.0, 1);
            runs = time_inference(args, || Ok(up.model.forward(frontend.prepare(&waves, &base)?)?))?;
        }
        Task::WhisperEncoder1x30 => {
            let mut up = Upstream::random(WHISPER_BASE, "whisper-base (random)", 0, &base)?;
            up.model.set_precision(args.precision);
            let input = up.frontend.prepare(&noise(1, 30.0, 1), &base)?;
            runs = time_inference(args, || Ok(up.model.forward(input.clone())?))?;
        }
        Task::LoraCtc2x5
        | Task::LoraCtc2x5NoDropout
        | Task::LoraCtc2x5Cached
        | Task::FrozenWs2x5
        | Task::FrozenWs2x5Cached => {
            let device = training(&base, args);
            let up = Upstream::random(WAV2VEC2_BASE, "wav2vec2-base (random)", 0, &device)?;
            let mut upstream = up.model.no_grad();
            let mut cache = (task == Task::FrozenWs2x5Cached)
                .then(|| FeatureCache::for_model(&upstream, &frontend, false, usize::MAX, false))
                .flatten();
            let featurizer = if matches!(task, Task::LoraCtc2x5 | Task::LoraCtc2x5NoDropout | Task::LoraCtc2x5Cached) {
                upstream.attach_lora(&LoraConfig::default(), &device)?;
                upstream.relayout_for_backward();
                if task == Task::LoraCtc2x5Cached {
                    // (a CNN-feature cache: the CNN is frozen, the layers above train)
                    cache = FeatureCache::for_model(&upstream, &frontend, false, usize::MAX, false);
                    anyhow::ensure!(
                        cache.as_ref().is_some_and(|c| c.kind() == CacheKind::CnnFeatures),
                        "LoRA caches CNN features"
                    );
                }
                None
            } else {
                Some(Featurizer::new(upstream.num_layers() + 1, false, false, &device))
            };
            upstream.set_precision(args.precision);
            let d = upstream.hidden_size();
            let mut model = StepModel { upstream, featurizer, head: LinearHead::new(d, VOCAB, &device) };
            let mut optim = speechtune_train::optim::adamw(1e-8, 1e-4);
            let waves = noise(2, 5.0, 1);
            let mut rng = speechtune_data::Rng::new(2);
            let targets: Vec<Vec<u32>> =
                (0..2).map(|_| (0..TARGET_LEN).map(|_| 1 + rng.below(VOCAB - 1) as u32).collect()).collect();
            // The first epoch fills the cache, untimed; timed runs read it (later epochs).
            if let Some(c) = cache.as_mut() {
                match c.kind() {
                    CacheKind::HiddenStates => drop(c.output(&model.upstream, &[0, 1], &waves, &device)?),
                    CacheKind::CnnFeatures => drop(c.input(&model.upstream, &[0, 1], &waves, &device)?),
                }
            }
            for i in 0..args.warmup + args.repeats {
                if i == args.warmup {
                    perf_control("enable");
                }
                let t = Instant::now();
                let out = match cache.as_mut() {
                    Some(c) if c.kind() == CacheKind::HiddenStates => {
                        c.output(&model.upstream, &[0, 1], &waves, &device)?
                    }
                    Some(c) => model.upstream.forward(c.input(&model.upstream, &[0, 1], &waves, &device)?)?,
                    None => model.upstream.forward(frontend.prepare(&waves, &device)?)?,
                };
                let loss = model.loss(out, &targets)?;
                let _ = loss.clone().into_scalar::<f32>();
                let forward = t.elapsed().as_secs_f64();
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                let backward = t.elapsed().as_secs_f64();
                model = optim.step(1e-4, model, grads);
                // Wait for the update to land (asynchronous backends).
                let _ = model.head.out.weight.val().sum().into_scalar::<f32>();
                let total = t.elapsed().as_secs_f64();
                if i >= args.warmup {
                    record_step(&mut runs, &mut phases, [forward, backward, total]);
                }
            }
            perf_control("disable");
        }
    }
    let has_phases = !phases[0].is_empty();
    let [forward, backward, update] = phases.map(|p| median(&p));
    Ok(serde_json::json!({
        "task": task.name(),
        "median_s": median(&runs),
        "phases_median_s": has_phases.then(|| serde_json::json!({
            "forward": forward, "backward": backward, "update": update
        })),
        "runs_s": runs,
        "shapes": (!shapes.is_empty()).then_some(shapes),
        "peak_rss_mb": speechtune_train::peak_rss().map(|b| b as f64 / (1 << 20) as f64),
        "speechtune": env!("CARGO_PKG_VERSION"),
        "burn": "0.22.1",
        "device": format!("{base:?}"),
        "activation_checkpointing": args.activation_checkpointing,
        "precision": args.precision.to_string(),
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "build": build(&base),
    }))
}

/// What the numbers were computed with, so that a later regression can be traced to a build:
/// burn's backend and features, and the instruction sets the kernels could pick at run time.
fn build(device: &Device) -> serde_json::Value {
    // Kept in step with `[workspace.dependencies]` of Cargo.toml (burn, burn-flex).
    const BURN_FEATURES: &str = "std, flex, simd, rayon, autodiff, optim; burn-flex x86-v4";
    let mut program = Vec::new();
    for (on, name) in
        [(cfg!(feature = "vulkan"), "vulkan"), (cfg!(feature = "cuda"), "cuda"), (cfg!(feature = "mpi"), "mpi")]
    {
        if on {
            program.push(name);
        }
    }
    #[cfg(target_arch = "x86_64")]
    let isa: Vec<&str> = [
        (std::arch::is_x86_feature_detected!("avx512f"), "avx512f"),
        (std::arch::is_x86_feature_detected!("avx512bf16"), "avx512bf16"),
        (std::arch::is_x86_feature_detected!("avx2"), "avx2"),
        (std::arch::is_x86_feature_detected!("fma"), "fma"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    #[cfg(not(target_arch = "x86_64"))]
    let isa: Vec<&str> = Vec::new();
    let cpu = *device == Device::flex();
    serde_json::json!({
        "backend": if cpu { "flex (CPU)".to_string() } else { format!("{device:?}") },
        "burn_features": BURN_FEATURES,
        "program_features": program,
        "cpu_isa": isa,
        // On the CPU: matrix products by the gemm crate (AVX-512 kernels where avx512f is
        // listed), called by burn-flex, and through speechtune-kernels' `mm` (threads split the
        // output's columns) by the native CNN and by speechtune-kernels' fused
        // operations (attention, frozen linear layers, activations, softmax, layer norm), which
        // carry their own backward passes on the training graph; GELU and softmax by
        // `fastmath`'s vectorised functions.
        "kernels": if cpu {
            "gemm 0.19 (burn-flex; kernels::mm, a block of output columns per thread: native CNN and Whisper front-end, fused attention and frozen linear layers), fastmath GELU/softmax, fused layer norm, first conv layer's group norm folded; training: channels-last conv and trainable linear layers with their own backward (kernels::mm), AdamW fused"
        } else {
            "cubecl"
        },
        // Mixed precision's products: AMX tiles, `vdpbf16ps` (AVX512_BF16) or a portable loop;
        // which operations run on them: frozen linear layers, the frozen CNN (but a first layer
        // with its group norm folded), positional convolution and Whisper's front-end, and (where the kernel is
        // native) the fused attention's products, forward and backward.
        "bf16_kernel": speechtune_kernels::bf16::kernel_name(),
        "bf16_ops": if speechtune_kernels::bf16::native() {
            "frozen linear layers, frozen CNN (first layer f32, group norm folded), frozen positional conv and Whisper front-end convs, attention (forward and backward)"
        } else {
            "frozen linear layers, frozen CNN (first layer f32, group norm folded), frozen positional conv and Whisper front-end convs"
        },
    })
}

/// The inference tasks' timed runs of `forward` (after `args.warmup` untimed ones), each until
/// its last hidden state is there (asynchronous backends), as the peer's call returns it.
fn time_inference(args: &Args, mut forward: impl FnMut() -> Result<UpstreamOutput>) -> Result<Vec<f64>> {
    let mut runs = Vec::new();
    for i in 0..args.warmup + args.repeats {
        if i == args.warmup {
            perf_control("enable");
        }
        let t = Instant::now();
        let out = forward()?;
        let _ = out.hidden_states.last().context("no hidden state")?.clone().sum().into_scalar::<f32>();
        if i >= args.warmup {
            runs.push(t.elapsed().as_secs_f64());
        }
    }
    perf_control("disable");
    Ok(runs)
}

/// `bench/profile.sh` records the timed runs only: it starts `perf record --delay=-1 --control
/// fifo:CTL,ACK` and names the two FIFOs in `SPEECHTUNE_PERF_CTL` / `SPEECHTUNE_PERF_ACK`; this
/// switches recording on or off and waits for perf's acknowledgement. Without them, nothing.
fn perf_control(command: &str) {
    use std::io::{Read, Write};
    let (Some(ctl), Some(ack)) = (std::env::var_os("SPEECHTUNE_PERF_CTL"), std::env::var_os("SPEECHTUNE_PERF_ACK"))
    else {
        return;
    };
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(ctl) {
        let _ = writeln!(f, "{command}");
        let mut reply = [0u8; 5];
        if let Ok(mut a) = std::fs::File::open(ack) {
            let _ = a.read(&mut reply);
        }
    }
}

/// One timed training step: its total, and its forward / backward / update phases from the
/// times at which each ended.
fn record_step(runs: &mut Vec<f64>, phases: &mut [Vec<f64>; 3], [forward, backward, total]: [f64; 3]) {
    runs.push(total);
    for (p, v) in phases.iter_mut().zip([forward, backward - forward, total - backward]) {
        p.push(v);
    }
}

fn median(runs: &[f64]) -> f64 {
    let mut sorted = runs.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

pub fn run(args: Args) -> Result<()> {
    if let Some(task) = args.task {
        println!("{}", run_task(task, &args)?);
        return Ok(());
    }
    // Each task in its own process, so that its peak memory is its own.
    let exe = std::env::current_exe().context("cannot find the speechtune executable")?;
    for task in Task::ALL {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["bench", "--task", task.name(), "--repeats", &args.repeats.to_string()]);
        cmd.args(["--warmup", &args.warmup.to_string()]);
        if let Some(d) = &args.device {
            cmd.args(["--device", d]);
        }
        if args.activation_checkpointing {
            cmd.arg("--activation-checkpointing");
        }
        cmd.args(["--precision", &args.precision.to_string()]);
        let status = cmd.status().with_context(|| format!("cannot run {}", exe.display()))?;
        anyhow::ensure!(status.success(), "bench task {} failed ({status})", task.name());
    }
    Ok(())
}
