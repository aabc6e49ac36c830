//! Featurizer, heads and loss on small inputs with known answers.

use burn::prelude::*;
use burn::tensor::TensorData;
use speechtune_tasks::{Featurizer, MeanPoolClassifier, SuperbDownstream, ctc_loss};

fn t3(v: Vec<f32>, shape: [usize; 3], device: &Device) -> Tensor<3> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

#[test]
fn ctc_loss_matches_the_sum_over_alignments() {
    let device = Device::flex();
    // Two frames, probabilities (blank 0.6, a 0.4) each; target "a" has three alignments:
    // a_, _a, aa = 0.24 + 0.24 + 0.16 = 0.64.
    let logits = t3(vec![0.6f32.ln(), 0.4f32.ln(), 0.6f32.ln(), 0.4f32.ln()], [1, 2, 2], &device);
    let loss = vals(ctc_loss(logits, &[2], &[vec![1]], 0));
    assert!((loss[0] - (-(0.64f32).ln())).abs() < 1e-5, "{loss:?}");
    // Padding frames beyond the length do not count; loss is divided by the target length.
    let logits = t3(
        vec![
            0.6f32.ln(),
            0.4f32.ln(),
            0.6f32.ln(),
            0.4f32.ln(),
            0.0,
            9.0,
            0.5f32.ln(),
            0.5f32.ln(),
            0.5f32.ln(),
            0.5f32.ln(),
            0.0,
            0.0,
        ],
        [2, 3, 2],
        &device,
    );
    let loss = vals(ctc_loss(logits, &[2, 2], &[vec![1], vec![1, 1]], 0));
    assert!((loss[0] - (-(0.64f32).ln())).abs() < 1e-5, "{loss:?}");
    // "a a" in 2 frames is impossible (needs a blank between): infinite loss.
    assert!(!loss[1].is_finite() || loss[1] > 1e3, "{loss:?}");
}

#[test]
fn featurizer_starts_as_the_mean_and_learns_weights() {
    let device = Device::flex().autodiff();
    let hidden: Vec<Tensor<3>> = (0..3).map(|i| t3(vec![i as f32; 8], [1, 2, 4], &device)).collect();
    let f = Featurizer::new(3, false, false, &device);
    assert_eq!(vals(f.forward(&hidden)), vec![1.0; 8]);
    assert_eq!(f.layer_weights(), vec![1.0 / 3.0; 3]);
    let no_cnn = Featurizer::new(3, true, false, &device);
    assert_eq!(vals(no_cnn.forward(&hidden)), vec![1.5; 8]);
    let grads = f.forward(&hidden).sum().backward();
    let g = vals(f.weights.val().grad(&grads).unwrap());
    // d/dw_i of mean-weighted sum: softmax Jacobian · layer values (0, 1, 2) × 8 elements.
    assert!(g[0] < 0.0 && g[2] > 0.0 && g[1].abs() < 1e-6, "{g:?}");
    let normed = Featurizer::new(3, false, true, &device);
    let ramp: Vec<Tensor<3>> = (0..3).map(|_| t3((0..8).map(|x| x as f32).collect(), [1, 2, 4], &device)).collect();
    let y = vals(normed.forward(&ramp));
    assert!((y[0] + y[3]).abs() < 1e-4 && y[3] > 1.0, "layer-normalised per frame: {y:?}");
}

#[test]
fn mean_pooling_ignores_padding_and_heads_have_the_right_shapes() {
    let device = Device::flex();
    let head = MeanPoolClassifier::new(2, 3, &device);
    let x = t3(vec![1.0, 2.0, 3.0, 4.0, 100.0, 100.0], [1, 3, 2], &device);
    let padded = vals(head.forward(x, &[2]));
    let exact = vals(head.forward(t3(vec![1.0, 2.0, 3.0, 4.0], [1, 2, 2], &device), &[2]));
    assert_eq!(padded.len(), 3);
    for (a, b) in padded.iter().zip(&exact) {
        assert!((a - b).abs() < 1e-6);
    }
    let ds = SuperbDownstream::new(8, 11, 0.0, &device);
    assert_eq!(ds.forward(t3(vec![0.5; 2 * 5 * 8], [2, 5, 8], &device), &[5, 3]).dims(), [2, 5, 11]);
}

#[test]
fn every_classifier_ignores_padding() {
    use speechtune_tasks::{AttentiveStatsClassifier, Classifier, ProjectorClassifier};
    let device = Device::flex();
    let heads = [
        Classifier::Mean(MeanPoolClassifier::new(2, 3, &device)),
        Classifier::AttentiveStats(AttentiveStatsClassifier::new(2, 3, &device)),
        Classifier::Projector(ProjectorClassifier::new(2, 3, &device)),
    ];
    for head in heads {
        let padded = vals(head.forward(t3(vec![1.0, 2.0, 3.0, 5.0, 100.0, -100.0], [1, 3, 2], &device), &[2]));
        let exact = vals(head.forward(t3(vec![1.0, 2.0, 3.0, 5.0], [1, 2, 2], &device), &[2]));
        assert_eq!(padded.len(), 3);
        for (a, b) in padded.iter().zip(&exact) {
            assert!((a - b).abs() < 1e-5, "{padded:?} vs {exact:?}");
        }
    }
}

#[test]
fn attentive_stats_pooling_of_equal_weights_is_mean_and_std() {
    use burn::module::Param;
    use speechtune_tasks::AttentiveStatsClassifier;
    let device = Device::flex();
    let mut head = AttentiveStatsClassifier::new(1, 2, &device);
    // A zero score layer weighs every frame equally; an identity output reads [mean, std].
    head.score.weight = Param::from_tensor(Tensor::zeros([1, 1], &device));
    head.out.weight = Param::from_data(TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0], [2, 2]), &device);
    head.out.bias = Some(Param::from_tensor(Tensor::zeros([2], &device)));
    let y = vals(head.forward(t3(vec![1.0, 3.0, 5.0, 7.0], [1, 4, 1], &device), &[4]));
    assert!((y[0] - 4.0).abs() < 1e-5 && (y[1] - 5f32.sqrt()).abs() < 1e-4, "{y:?}");
}
