//! Reading trained runs. So far: the featurizer's layer weights as a CSV table and an SVG plot
//! (seed 000's `analyze_layer_weights`), for one run or several side by side.

mod layers;

pub use layers::{layer_weights_csv, plot_layer_weights};
