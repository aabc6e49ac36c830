//! Integrated gradients: completeness at m = 64 on every layer of the tiny upstream with the
//! ML-SUPERB CTC downstream, and the LUR report's shape.

mod common;

use common::config;
use speechtune_models::burn::prelude::*;
use speechtune_train::lur::{Target, integrated_gradients, layer_utilization};
use speechtune_train::{TaskModel, load_upstream};

#[test]
fn integrated_gradients_are_complete_and_lur_covers_every_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), &tmp.path().join("run"), "asr", "kind = \"frozen\"", "");
    cfg.task.dropout = 0.0;
    let device = Device::flex().autodiff();
    device.seed(7);
    let upstream = load_upstream(&cfg, &device).unwrap();
    let frontend = upstream.frontend.clone();
    let model = TaskModel::build(upstream.model, &cfg, 12, 0, &device).unwrap();
    let wave: Vec<f32> =
        (0..12000).map(|i| ((i as f32) * 0.031).sin() * 0.3 + ((i as f32) * 0.0071).cos() * 0.2).collect();
    let out = model.upstream.forward(frontend.prepare(std::slice::from_ref(&wave), &device).unwrap()).unwrap();
    let hidden: Vec<Tensor<3>> = out.hidden_states.into_iter().map(|h| h.detach()).collect();
    let t = hidden[0].dims()[1];
    let targets = vec![Target { token: 3, frames: (0..t / 2).collect() }, Target { token: 7, frames: vec![1, t - 2] }];
    // Completeness: the attributions sum to f(x) - f(0). Tolerances, relative to |f(x) - f(0)|
    // (measured on this seeded model in brackets): m = 64 on layers 2-4: 5% (≤ 2.0%); m = 256 on
    // layers 1-2: 1e-4 (≤ 3.2e-5). At m = 64 the first layer is not complete for one target
    // (99% off): through 3 pre-LN layers f(αx) keeps changing down to α ~ 1e-20, see `path_nodes`,
    // which is why `analyze lur` defaults to m = 256 and reports the error it reached.
    for (layer, steps, tolerance) in [(2, 64, 0.05), (3, 64, 0.05), (4, 64, 0.05), (1, 256, 1e-4), (2, 256, 1e-4)] {
        let a = integrated_gradients(&model, &hidden, layer, &targets, steps, 64).unwrap();
        for (j, ig) in a.ig.iter().enumerate() {
            let total: f64 = ig.iter().map(|&v| v as f64).sum();
            let delta = (a.f_x[j] - a.f_0[j]) as f64;
            assert!(delta.abs() > 1e-2, "layer {layer}: a target that does not depend on the layer tests nothing");
            assert!(
                (total - delta).abs() <= tolerance * delta.abs(),
                "layer {layer}, m = {steps}, target {j}: attributions sum to {total}, f(x) - f(0) = {delta}"
            );
        }
    }
    let report = layer_utilization(&model, &frontend, &[wave], 0, 16, &device, |_| {}).unwrap();
    assert_eq!(report.layers, vec![1, 2, 3, 4]);
    assert_eq!(report.dim, 128);
    assert!(report.characters > 0 && report.frames > 0, "{report:?}");
    assert!(report.percent.iter().all(|p| *p > 0.0 && *p < 100.0), "{report:?}");
    assert!(report.steps == 16 && report.completeness_error.is_finite(), "{report:?}");
}
