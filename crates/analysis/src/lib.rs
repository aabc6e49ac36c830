//! Reading trained runs: the featurizer's layer weights as a CSV table and an SVG plot (seed
//! 000's `analyze_layer_weights`), for one run or several side by side; the similarity of binary
//! masks across languages (seed 004), with heatmaps and the correlation with a distance matrix;
//! training curves (pre-training: loss, accuracy, perplexity against updates).

mod curves;
mod layers;
mod masks;

pub use curves::{Panel, Series, moving_average, plot_panels};
pub use layers::{layer_weights_csv, plot_layer_weights, plot_per_layer};
pub use masks::{
    Similarity, heatmap_png, heatmap_svg, mask_similarity, matrix_correlation, matrix_csv, read_matrix_csv,
};
