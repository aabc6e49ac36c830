//! Training curves: several panels stacked in one SVG, each with one or more series of
//! (update, value) points (e.g. `speechtune analyze pretrain`: loss, accuracy, perplexity).

use std::path::Path;

use plotters::prelude::*;

/// One line of a panel: a name and its (x, y) points; `dots` draws markers instead of a line
/// (sparse values such as evaluations).
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub dots: bool,
}

/// One panel: its y-axis label and series.
#[derive(Debug, Clone)]
pub struct Panel {
    pub y_desc: String,
    pub series: Vec<Series>,
}

/// The mean of each point with the `window - 1` before it (a trailing moving average).
pub fn moving_average(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let window = window.max(1);
    let mut sum = 0.0;
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, y))| {
            sum += y;
            if i >= window {
                sum -= points[i - window].1;
            }
            (x, sum / (i + 1).min(window) as f64)
        })
        .collect()
}

/// Panels stacked vertically, sharing the x axis (`x_desc`), as SVG.
pub fn plot_panels(path: &Path, title: &str, x_desc: &str, panels: &[Panel]) -> Result<(), String> {
    let points = || panels.iter().flat_map(|p| p.series.iter().flat_map(|s| s.points.iter()));
    let x_max = points().map(|p| p.0).fold(0.0f64, f64::max).max(1.0);
    if points().next().is_none() {
        return Err("nothing to plot".into());
    }
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let root = SVGBackend::new(path, (760, 40 + 260 * panels.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(|e| err(&e))?;
    for (area, panel) in root.split_evenly((panels.len(), 1)).iter().zip(panels) {
        let ys = || panel.series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).filter(|y| y.is_finite());
        let (lo, hi) = (ys().fold(f64::INFINITY, f64::min), ys().fold(f64::NEG_INFINITY, f64::max));
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let pad = ((hi - lo) * 0.08).max(1e-6);
        let mut chart = ChartBuilder::on(area)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max, lo - pad..hi + pad)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(panel.y_desc.as_str())
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()
            .map_err(|e| err(&e))?;
        for (i, s) in panel.series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let finite = s.points.iter().copied().filter(|p| p.1.is_finite());
            let drawn = if s.dots {
                chart.draw_series(finite.map(|p| Circle::new(p, 4, color.filled()))).map_err(|e| err(&e))?
            } else {
                chart.draw_series(LineSeries::new(finite, color.stroke_width(2))).map_err(|e| err(&e))?
            };
            drawn
                .label(s.name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 12, y + 4)], color.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_trails_and_starts_with_the_points_seen() {
        let p: Vec<(f64, f64)> = [1.0, 3.0, 5.0, 7.0].iter().enumerate().map(|(i, &y)| (i as f64, y)).collect();
        assert_eq!(moving_average(&p, 2), vec![(0.0, 1.0), (1.0, 2.0), (2.0, 4.0), (3.0, 6.0)]);
        assert_eq!(moving_average(&p, 10)[3], (3.0, 4.0));
    }

    #[test]
    fn panels_are_written_and_empty_input_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.svg");
        let s = |name: &str, dots| Series { name: name.into(), points: vec![(0.0, 2.0), (10.0, 1.0)], dots };
        let panels = vec![
            Panel { y_desc: "loss".into(), series: vec![s("train", false), s("valid", true)] },
            Panel { y_desc: "accuracy".into(), series: vec![s("train", false)] },
        ];
        plot_panels(&path, "curves", "update", &panels).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("<svg") && svg.contains("loss") && svg.contains("accuracy") && svg.contains("valid"));
        let empty = vec![Panel { y_desc: "loss".into(), series: vec![] }];
        assert_eq!(plot_panels(&path, "curves", "update", &empty), Err("nothing to plot".to_string()));
    }
}
