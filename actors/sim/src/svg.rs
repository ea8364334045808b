//! Plots as hand-written SVG (no plotting dependency): a per-stream timeline of a window of
//! spans, utilisation bars, and a line plot of a swept parameter. Text is escaped; every plot is
//! one self-contained file.

use std::fmt::Write as _;

use crate::clock::Span;

const W: f64 = 960.0;
const LEFT: f64 = 140.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A stable colour per kernel / transfer name.
fn colour(name: &str) -> &'static str {
    match name {
        "attention" => "#4e79a7",
        "dispatch" => "#f28e2b",
        "experts" => "#59a14f",
        "shared" => "#76b7b2",
        "combine" => "#e15759",
        "mlp" => "#edc948",
        "embed" | "head" => "#b07aa1",
        _ => "#9c755f",
    }
}

fn header(out: &mut String, h: f64, title: &str) {
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <text x=\"10\" y=\"18\" font-size=\"14\">{}</text>",
        escape(title)
    );
}

/// Spans between `t0` and `t1` (µs), one row per stream (`names`) plus one for the link.
pub fn timeline(spans: &[Span], names: &[String], t0: f64, t1: f64, title: &str) -> String {
    let rows: Vec<usize> = {
        let mut used: Vec<usize> = spans
            .iter()
            .filter(|s| !s.transfer && s.end > t0 && s.start < t1)
            .map(|s| s.track as usize)
            .collect();
        used.sort_unstable();
        used.dedup();
        used.truncate(64);
        used
    };
    let row_h = 18.0;
    let h = 50.0 + row_h * (rows.len() + 1) as f64 + 30.0;
    let scale = (W - LEFT - 20.0) / (t1 - t0).max(1e-9);
    let mut out = String::new();
    header(&mut out, h, title);
    let y_of = |r: usize| 34.0 + row_h * r as f64;
    for (i, &s) in rows.iter().enumerate() {
        let name = names
            .get(s)
            .cloned()
            .unwrap_or_else(|| format!("stream{s}"));
        let _ = write!(
            out,
            "<text x=\"10\" y=\"{}\">{}</text>",
            y_of(i) + 12.0,
            escape(&name)
        );
    }
    let link_row = rows.len();
    let _ = write!(
        out,
        "<text x=\"10\" y=\"{}\">link</text>",
        y_of(link_row) + 12.0
    );
    for s in spans.iter().filter(|s| s.end > t0 && s.start < t1) {
        let row = match s.transfer {
            true => link_row,
            false => match rows.binary_search(&(s.track as usize)) {
                Ok(r) => r,
                Err(_) => continue,
            },
        };
        let x = LEFT + (s.start.max(t0) - t0) * scale;
        let w = ((s.end.min(t1) - s.start.max(t0)) * scale).max(0.5);
        let _ = write!(
            out,
            "<rect x=\"{x:.2}\" y=\"{:.1}\" width=\"{w:.2}\" height=\"{:.1}\" fill=\"{}\" fill-opacity=\"0.85\"><title>{} {:.1}-{:.1} µs</title></rect>",
            y_of(row) + 2.0,
            row_h - 4.0,
            colour(s.label.name),
            escape(s.label.name),
            s.start,
            s.end
        );
    }
    let _ = write!(
        out,
        "<text x=\"{LEFT}\" y=\"{}\">0</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.3} ms</text></svg>",
        h - 10.0,
        W - 20.0,
        h - 10.0,
        (t1 - t0) / 1e3
    );
    out
}

/// Horizontal bars: fraction (0..1) per label.
pub fn bars(items: &[(String, f64)], title: &str) -> String {
    let items = &items[..items.len().min(64)];
    let row_h = 16.0;
    let h = 40.0 + row_h * items.len() as f64 + 10.0;
    let mut out = String::new();
    header(&mut out, h, title);
    let full = W - LEFT - 80.0;
    for (i, (label, f)) in items.iter().enumerate() {
        let y = 30.0 + row_h * i as f64;
        let w = full * f.clamp(0.0, 1.0);
        let _ = write!(
            out,
            "<text x=\"10\" y=\"{:.1}\">{}</text><rect x=\"{LEFT}\" y=\"{:.1}\" width=\"{w:.2}\" height=\"{:.1}\" fill=\"#4e79a7\"/><text x=\"{:.1}\" y=\"{:.1}\">{:.1}%</text>",
            y + 12.0,
            escape(label),
            y + 2.0,
            row_h - 4.0,
            LEFT + w + 4.0,
            y + 12.0,
            100.0 * f
        );
    }
    out.push_str("</svg>");
    out
}

/// A line plot of `series` (name, y per x) over the `x` labels.
pub fn lines(x: &[String], series: &[(String, Vec<f64>)], y_label: &str, title: &str) -> String {
    let h = 420.0;
    let (top, bottom) = (40.0, h - 60.0);
    let y_max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1e-12)
        * 1.1;
    let n = x.len().max(2) as f64 - 1.0;
    let px = |i: usize| LEFT + (W - LEFT - 160.0) * i as f64 / n;
    let py = |v: f64| bottom - (bottom - top) * v / y_max;
    let mut out = String::new();
    header(&mut out, h, title);
    let _ = write!(
        out,
        "<line x1=\"{LEFT}\" y1=\"{bottom}\" x2=\"{}\" y2=\"{bottom}\" stroke=\"black\"/><line x1=\"{LEFT}\" y1=\"{top}\" x2=\"{LEFT}\" y2=\"{bottom}\" stroke=\"black\"/>\
         <text x=\"10\" y=\"{top}\">{}</text><text x=\"10\" y=\"{:.1}\">{:.4}</text><text x=\"10\" y=\"{bottom}\">0</text>",
        W - 160.0,
        escape(y_label),
        top + 14.0,
        y_max
    );
    for (i, l) in x.iter().enumerate() {
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            px(i),
            bottom + 16.0,
            escape(l)
        );
    }
    let palette = [
        "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#9c755f",
    ];
    for (k, (name, ys)) in series.iter().enumerate() {
        let c = palette[k % palette.len()];
        let pts: Vec<String> = ys
            .iter()
            .enumerate()
            .map(|(i, &v)| format!("{:.1},{:.1}", px(i), py(v)))
            .collect();
        let _ = write!(
            out,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
            pts.join(" ")
        );
        for (i, &v) in ys.iter().enumerate() {
            let _ = write!(out, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"><title>{v:.4}</title></circle>", px(i), py(v));
        }
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{c}\">{}</text>",
            W - 150.0,
            top + 16.0 * k as f64,
            escape(name)
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Label;

    #[test]
    fn plots_are_svg_with_escaped_text() {
        let label = Label {
            name: "experts",
            layer: Some(1),
            micro_batch: Some(0),
        };
        let spans = vec![
            Span {
                start: 0.0,
                end: 10.0,
                track: 0,
                transfer: false,
                bytes: 0.0,
                label,
            },
            Span {
                start: 5.0,
                end: 20.0,
                track: 0,
                transfer: true,
                bytes: 8.0,
                label,
            },
        ];
        let t = timeline(&spans, &["a<b".into()], 0.0, 20.0, "step & more");
        assert!(t.starts_with("<svg") && t.ends_with("</svg>"));
        assert!(t.contains("a&lt;b") && t.contains("step &amp; more"));
        assert_eq!(t.matches("<rect").count(), 3); // background + kernel + transfer
        let b = bars(&[("s0".into(), 0.5)], "u");
        assert!(b.contains("50.0%"));
        let l = lines(
            &["1".into(), "2".into()],
            &[("x".into(), vec![1.0, 2.0])],
            "tok/s",
            "sweep",
        );
        assert!(l.contains("<polyline"));
    }
}
