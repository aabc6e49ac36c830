//! Similarity of binary masks (S3-Router, one per language): cosine and intersection over union,
//! as matrices, heatmaps, and the correlation with a distance matrix given by the user (the
//! seed's question: do masks of phonetically close languages overlap more?).

use std::path::Path;

use plotters::prelude::*;

/// Binary masks as bit counts: a mask is the set of kept weights over all masked layers, in one
/// fixed order.
#[derive(Debug, Clone, PartialEq)]
pub struct Similarity {
    pub names: Vec<String>,
    /// Cosine of the 0/1 vectors: |A ∩ B| / sqrt(|A| |B|).
    pub cosine: Vec<Vec<f64>>,
    /// |A ∩ B| / |A ∪ B|.
    pub iou: Vec<Vec<f64>>,
    /// IoU of the pruned sets (the complement): at low sparsity, where masks differ.
    pub iou_pruned: Vec<Vec<f64>>,
}

/// Pairwise similarity of equally long masks.
pub fn mask_similarity(masks: &[(String, Vec<bool>)]) -> Result<Similarity, String> {
    let n = masks.len();
    if let Some((name, m)) = masks.iter().find(|(_, m)| m.len() != masks[0].1.len()) {
        return Err(format!("mask {name} has {} weights, {} has {}", m.len(), masks[0].0, masks[0].1.len()));
    }
    let mut cosine = vec![vec![0.0; n]; n];
    let mut iou = vec![vec![0.0; n]; n];
    let mut iou_pruned = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..n {
            let (a, b) = (&masks[i].1, &masks[j].1);
            let (mut both, mut either, mut na, mut nb, mut neither, mut total) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
            for (&x, &y) in a.iter().zip(b) {
                both += u64::from(x && y);
                either += u64::from(x || y);
                na += u64::from(x);
                nb += u64::from(y);
                neither += u64::from(!x && !y);
                total += 1;
            }
            let ratio = |p: u64, q: u64| if q == 0 { 1.0 } else { p as f64 / q as f64 };
            cosine[i][j] = if na == 0 || nb == 0 { 0.0 } else { both as f64 / ((na as f64) * (nb as f64)).sqrt() };
            iou[i][j] = ratio(both, either);
            iou_pruned[i][j] = ratio(neither, total - both);
        }
    }
    Ok(Similarity { names: masks.iter().map(|m| m.0.clone()).collect(), cosine, iou, iou_pruned })
}

/// A square matrix as CSV with a header row and column of names.
pub fn matrix_csv(names: &[String], m: &[Vec<f64>]) -> String {
    let mut s = String::from("name");
    for n in names {
        s += &format!(",{n}");
    }
    s.push('\n');
    for (name, row) in names.iter().zip(m) {
        s += name;
        for v in row {
            s += &format!(",{v:.6}");
        }
        s.push('\n');
    }
    s
}

/// Read a square matrix CSV as [`matrix_csv`] writes it (header row and first column: names).
pub fn read_matrix_csv(text: &str) -> Result<(Vec<String>, Vec<Vec<f64>>), String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> =
        lines.next().ok_or("empty matrix file")?.split(',').skip(1).map(|s| s.trim().to_string()).collect();
    let mut rows = Vec::new();
    let mut names = Vec::new();
    for (i, line) in lines.enumerate() {
        let mut cells = line.split(',');
        names.push(cells.next().unwrap_or("").trim().to_string());
        let row: Result<Vec<f64>, String> = cells
            .map(|c| c.trim().parse::<f64>().map_err(|e| format!("line {}: \"{}\": {e}", i + 2, c.trim())))
            .collect();
        let row = row?;
        if row.len() != header.len() {
            return Err(format!("line {}: {} values for {} columns", i + 2, row.len(), header.len()));
        }
        rows.push(row);
    }
    if names != header {
        return Err(format!("row names {names:?} differ from the column names {header:?}"));
    }
    Ok((names, rows))
}

/// Pearson and Spearman correlation between the upper triangles of `a` (over `names_a`) and `b`
/// (over `names_b`), on the names they share; None with fewer than 3 pairs.
pub fn matrix_correlation(
    names_a: &[String],
    a: &[Vec<f64>],
    names_b: &[String],
    b: &[Vec<f64>],
) -> Option<(f64, f64, usize)> {
    let shared: Vec<(usize, usize)> =
        names_a.iter().enumerate().filter_map(|(i, n)| names_b.iter().position(|m| m == n).map(|j| (i, j))).collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for p in 0..shared.len() {
        for q in p + 1..shared.len() {
            x.push(a[shared[p].0][shared[q].0]);
            y.push(b[shared[p].1][shared[q].1]);
        }
    }
    if x.len() < 3 {
        return None;
    }
    Some((pearson(&x, &y), pearson(&ranks(&x), &ranks(&y)), x.len()))
}

fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    if vx == 0.0 || vy == 0.0 { 0.0 } else { cov / (vx * vy).sqrt() }
}

/// Ranks with ties averaged (for Spearman).
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        for k in i..=j {
            r[order[k]] = (i + j) as f64 / 2.0 + 1.0;
        }
        i = j + 1;
    }
    r
}

/// Map `t` in [0, 1] to a blue → yellow colour ramp (viridis-like end points).
fn ramp(t: f64) -> (u8, u8, u8) {
    let t = t.clamp(0.0, 1.0);
    let stops =
        [(68.0, 1.0, 84.0), (59.0, 82.0, 139.0), (33.0, 145.0, 140.0), (94.0, 201.0, 98.0), (253.0, 231.0, 37.0)];
    let x = t * (stops.len() - 1) as f64;
    let i = (x.floor() as usize).min(stops.len() - 2);
    let f = x - i as f64;
    let (a, b) = (stops[i], stops[i + 1]);
    let mix = |p: f64, q: f64| (p + (q - p) * f).round() as u8;
    (mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// The colour scale of a heatmap: the matrix's off-diagonal range (the diagonal is 1).
fn scale(m: &[Vec<f64>]) -> (f64, f64) {
    let off: Vec<f64> = m
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.iter().enumerate().filter(move |(j, _)| *j != i).map(|(_, v)| *v))
        .collect();
    let lo = off.iter().copied().fold(f64::MAX, f64::min);
    let hi = off.iter().copied().fold(f64::MIN, f64::max);
    if off.is_empty() || hi - lo < 1e-12 { (0.0, 1.0) } else { (lo, hi) }
}

/// A heatmap as PNG: `cell` pixels per entry, colour over the off-diagonal range (no text: the
/// SVG version carries the labels and values).
pub fn heatmap_png(path: &Path, m: &[Vec<f64>], cell: u32) -> Result<(), String> {
    let n = m.len() as u32;
    if n == 0 {
        return Err("empty matrix".into());
    }
    let (lo, hi) = scale(m);
    let side = n * cell;
    let mut pixels = vec![0u8; (side * side * 3) as usize];
    for y in 0..side {
        for x in 0..side {
            let (i, j) = ((y / cell) as usize, (x / cell) as usize);
            let (r, g, b) = if i == j { (255, 255, 255) } else { ramp((m[i][j] - lo) / (hi - lo)) };
            let p = ((y * side + x) * 3) as usize;
            pixels[p..p + 3].copy_from_slice(&[r, g, b]);
        }
    }
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, side, side);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| e.to_string())?;
        w.write_image_data(&pixels).map_err(|e| e.to_string())?;
    }
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// A labelled heatmap with the values written in the cells, as SVG.
pub fn heatmap_svg(path: &Path, title: &str, names: &[String], m: &[Vec<f64>]) -> Result<(), String> {
    let n = names.len();
    if n == 0 {
        return Err("empty matrix".into());
    }
    let (lo, hi) = scale(m);
    let cell = 56u32;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let root = SVGBackend::new(path, (140 + cell * n as u32, 110 + cell * n as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    root.draw(&Text::new(title.to_string(), (10, 10), ("sans-serif", 18))).map_err(|e| err(&e))?;
    let (x0, y0) = (100i32, 70i32);
    for (i, row) in m.iter().enumerate() {
        let y = y0 + (i as u32 * cell) as i32;
        root.draw(&Text::new(names[i].clone(), (10, y + cell as i32 / 2 - 6), ("sans-serif", 14)))
            .map_err(|e| err(&e))?;
        root.draw(&Text::new(names[i].clone(), (x0 + (i as u32 * cell) as i32 + 8, y0 - 22), ("sans-serif", 14)))
            .map_err(|e| err(&e))?;
        for (j, &v) in row.iter().enumerate() {
            let x = x0 + (j as u32 * cell) as i32;
            let (r, g, b) = if i == j { (255, 255, 255) } else { ramp((v - lo) / (hi - lo)) };
            root.draw(&Rectangle::new([(x, y), (x + cell as i32, y + cell as i32)], RGBColor(r, g, b).filled()))
                .map_err(|e| err(&e))?;
            let ink = if i == j || (v - lo) / (hi - lo) > 0.6 { BLACK } else { WHITE };
            root.draw(&Text::new(
                format!("{v:.3}"),
                (x + 8, y + cell as i32 / 2 - 6),
                ("sans-serif", 12).into_font().color(&ink),
            ))
            .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_of_a_mask_with_itself_is_one() {
        let a = vec![true, true, false, true, false, false];
        let b = vec![true, false, true, true, false, false];
        let s = mask_similarity(&[("a".into(), a), ("b".into(), b)]).unwrap();
        assert_eq!((s.cosine[0][0], s.iou[0][0], s.iou_pruned[1][1]), (1.0, 1.0, 1.0));
        // |A∩B| = 2, |A| = |B| = 3, |A∪B| = 4; pruned sets {2,4,5} and {1,4,5}: 2 shared of 4.
        assert!((s.cosine[0][1] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!((s.iou[0][1], s.iou_pruned[0][1]), (0.5, 0.5));
        assert_eq!(s.iou[1][0], s.iou[0][1]);
        assert!(mask_similarity(&[("a".into(), vec![true]), ("b".into(), vec![true, false])]).is_err());
    }

    #[test]
    fn correlation_with_a_distance_matrix() {
        let names: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let sim = vec![
            vec![1.0, 0.9, 0.5, 0.2],
            vec![0.9, 1.0, 0.6, 0.3],
            vec![0.5, 0.6, 1.0, 0.7],
            vec![0.2, 0.3, 0.7, 1.0],
        ];
        // A distance that is exactly 1 - similarity, with the names in another order.
        let order = [2usize, 0, 3, 1];
        let dnames: Vec<String> = order.iter().map(|&i| names[i].clone()).collect();
        let dist: Vec<Vec<f64>> = order.iter().map(|&i| order.iter().map(|&j| 1.0 - sim[i][j]).collect()).collect();
        let (p, s, pairs) = matrix_correlation(&names, &sim, &dnames, &dist).unwrap();
        assert_eq!(pairs, 6);
        assert!((p + 1.0).abs() < 1e-12 && (s + 1.0).abs() < 1e-12, "{p} {s}");
        let csv = matrix_csv(&dnames, &dist);
        let (n2, d2) = read_matrix_csv(&csv).unwrap();
        assert_eq!(n2, dnames);
        assert!(d2.iter().flatten().zip(dist.iter().flatten()).all(|(a, b)| (a - b).abs() < 1e-6));
        assert!(read_matrix_csv("name,a\nb,1\n").unwrap_err().contains("differ"));
    }

    #[test]
    fn heatmaps_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = vec!["eng".into(), "deu".into()];
        let m = vec![vec![1.0, 0.4], vec![0.4, 1.0]];
        let (png, svg) = (dir.path().join("m.png"), dir.path().join("m.svg"));
        heatmap_png(&png, &m, 10).unwrap();
        heatmap_svg(&svg, "t", &names, &m).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains("deu") && text.contains("0.400"));
    }
}
