use std::path::Path;

use plotters::prelude::*;

/// `layer,RUN1,RUN2,...` with one row per hidden state (0 = CNN output).
pub fn layer_weights_csv(runs: &[(String, Vec<f32>)]) -> String {
    let layers = runs.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let mut s = String::from("layer");
    for (name, _) in runs {
        s += &format!(",{name}");
    }
    s.push('\n');
    for i in 0..layers {
        s += &i.to_string();
        for (_, w) in runs {
            s += &w.get(i).map(|v| format!(",{v:.6}")).unwrap_or_else(|| ",".into());
        }
        s.push('\n');
    }
    s
}

/// Grouped bars of layer weights per run, as SVG.
pub fn plot_layer_weights(path: &Path, title: &str, runs: &[(String, Vec<f32>)]) -> Result<(), String> {
    plot_per_layer(path, title, ("hidden state (0 = CNN output)", "weight"), 0, runs)
}

/// Grouped bars of one value per layer and run, as SVG; `first` is the index of the first bar.
pub fn plot_per_layer(
    path: &Path,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    first: usize,
    runs: &[(String, Vec<f32>)],
) -> Result<(), String> {
    let layers = runs.iter().map(|r| r.1.len()).max().unwrap_or(0);
    if layers == 0 {
        return Err("no layer weights to plot".into());
    }
    let top = runs.iter().flat_map(|r| r.1.iter().copied()).fold(0.0f32, f32::max).max(1e-6) * 1.15;
    let root = SVGBackend::new(path, (160 + 70 * layers as u32, 420)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f32..layers as f32 - 0.5, 0f32..top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(layers)
        // Bars are centred on integers: label those, and only those.
        .x_label_formatter(&|x| {
            let r = x.round();
            if (x - r).abs() < 1e-3 && r >= 0.0 { format!("{}", r as usize + first) } else { String::new() }
        })
        .disable_x_mesh()
        .draw()
        .map_err(|e| err(&e))?;
    let n = runs.len().max(1) as f32;
    for (r, (name, w)) in runs.iter().enumerate() {
        let color = Palette99::pick(r).to_rgba();
        let width = 0.8 / n;
        chart
            .draw_series(w.iter().enumerate().map(|(i, &v)| {
                let x0 = i as f32 - 0.4 + r as f32 * width;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.95, v)], color.filled())
            }))
            .map_err(|e| err(&e))?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    if runs.len() > 1 {
        chart.configure_series_labels().border_style(BLACK).draw().map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_plot() {
        let runs = vec![("eng".to_string(), vec![0.1, 0.6, 0.3]), ("deu".to_string(), vec![0.2, 0.2, 0.6])];
        assert_eq!(
            layer_weights_csv(&runs),
            "layer,eng,deu\n0,0.100000,0.200000\n1,0.600000,0.200000\n2,0.300000,0.600000\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.svg");
        plot_layer_weights(&p, "layer weights", &runs).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        // 6 bars plus the legend's 2 swatches, and both run names in the legend.
        assert!(svg.matches("<rect").count() >= 8 && svg.contains("eng") && svg.contains("deu"), "{}", svg.len());
        assert!(plot_layer_weights(&p, "x", &[]).is_err());
    }
}
