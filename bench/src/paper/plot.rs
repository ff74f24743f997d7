//! The page's SVG plots (plotters): grouped bars with the rounds' spread
//! as whiskers, ours beside the paper's.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::plan::{KV_TESTS, LINKS};
use super::render::{PAPER_T1, paper_t2};
use super::stats::{Samples, Stat};

/// One series of bars: its name, colour, and a value per category.
struct Series {
    name: String,
    color: RGBColor,
    values: Vec<Option<Stat>>,
}

const OURS: RGBColor = RGBColor(0x2b, 0x6c, 0xb0);
const OURS_2: RGBColor = RGBColor(0x6b, 0xa3, 0xd6);
const PAPER: RGBColor = RGBColor(0xd9, 0x8c, 0x2b);
const BACKUP: RGBColor = RGBColor(0x9a, 0x9a, 0x9a);

fn fixed(v: f64) -> Option<Stat> {
    Some(Stat {
        median: v,
        min: v,
        max: v,
        n: 1,
    })
}

fn bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    cats: &[String],
    series: &[Series],
) -> anyhow::Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("plotting {}: {e}", path.display());
    let top = series
        .iter()
        .flat_map(|s| s.values.iter().flatten().map(|v| v.max))
        .fold(0.0f64, f64::max);
    // Headroom above the tallest whisker for the legend.
    let y_max = if top > 0.0 { top * 1.35 } else { 1.0 };
    let n = cats.len().max(1);
    let root = SVGBackend::new(path, (1100, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(70)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, 0f64..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_desc)
        .draw()
        .map_err(|e| err(&e))?;
    let k = series.len().max(1) as f64;
    let width = 0.8 / k;
    for (j, s) in series.iter().enumerate() {
        let x0 = |i: usize| i as f64 + 0.1 + j as f64 * width;
        chart
            .draw_series(s.values.iter().enumerate().filter_map(|(i, v)| {
                v.as_ref().map(|v| {
                    Rectangle::new(
                        [(x0(i), 0.0), (x0(i) + width * 0.9, v.median)],
                        s.color.filled(),
                    )
                })
            }))
            .map_err(|e| err(&e))?
            .label(s.name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], s.color.filled()));
        chart
            .draw_series(s.values.iter().enumerate().filter_map(|(i, v)| {
                v.as_ref().filter(|v| v.n > 1).map(|v| {
                    let x = x0(i) + width * 0.45;
                    PathElement::new(vec![(x, v.min), (x, v.max)], BLACK.stroke_width(1))
                })
            }))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(&e))?;
    let style =
        TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (i, c) in cats.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        for (l, line) in c.split('\n').enumerate() {
            root.draw(&Text::new(
                line.to_string(),
                (px, py + 8 + 14 * l as i32),
                style.clone(),
            ))
            .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn t1_ratio(s: &Samples, key: &str, time: bool) -> Option<Stat> {
    if time {
        s.ratio(&format!("{key}/run/ms"), &format!("{key}/ft/ms"))
    } else {
        s.ratio(&format!("{key}/ft/rate"), &format!("{key}/run/rate"))
    }
}

/// `results-table1.svg`, `results-table2.svg`, `results-cpu.svg` in `dir`.
pub fn all(dir: &Path, s: &Samples) -> anyhow::Result<()> {
    // Table 1: our rows, then the paper's.
    let mut cats: Vec<String> = vec!["compute".into(), "disk".into()];
    let mut ours = vec![t1_ratio(s, "compute", true), t1_ratio(s, "disk", true)];
    let service_keys: Vec<&str> = KV_TESTS
        .iter()
        .map(|t| t.2)
        .chain(["http/GET", "http/PUT"])
        .collect();
    for k in &service_keys {
        cats.push(k.replace('/', "\n"));
        ours.push(t1_ratio(s, k, false));
    }
    let mut paper = vec![None; cats.len()];
    let short = ["SPECjbb", "kernel compile", "Swingbench", "DVD Store"];
    for ((_, r, _), w) in PAPER_T1.iter().zip(short) {
        let r = *r;
        cats.push(format!("paper:\n{w}"));
        ours.push(None);
        paper.push(fixed(r));
    }
    bars(
        &dir.join("results-table1.svg"),
        "Table 1 analogue: FT performance ÷ non-FT",
        "FT ÷ non-FT",
        &cats,
        &[
            Series {
                name: "lockstep (median, whiskers: spread)".into(),
                color: OURS,
                values: ours,
            },
            Series {
                name: "paper (vSphere 4 FT)".into(),
                color: PAPER,
                values: paper,
            },
        ],
    )?;

    // Table 2: throughput per link and direction.
    let mut cats = Vec::new();
    let (mut run, mut ft, mut pap_run, mut pap_ft) = (vec![], vec![], vec![], vec![]);
    for (mbit, label) in LINKS {
        for (key, tx, dir) in [("net/rx", false, "receive"), ("net/tx", true, "transmit")] {
            cats.push(format!("{} Gbit/s link\n{dir}", mbit / 1000));
            run.push(s.get(&format!("{key}/run/rate")));
            ft.push(s.get(&format!("{key}/{label}/rate")));
            let (pn, pf, _) = paper_t2(mbit, tx);
            pap_run.push(fixed(pn));
            pap_ft.push(fixed(pf));
        }
    }
    bars(
        &dir.join("results-table2.svg"),
        "Table 2 analogue: guest network throughput (iperf3)",
        "Mbit/s",
        &cats,
        &[
            Series {
                name: "lockstep non-FT".into(),
                color: OURS_2,
                values: run,
            },
            Series {
                name: "lockstep FT".into(),
                color: OURS,
                values: ft,
            },
            Series {
                name: "paper non-FT".into(),
                color: RGBColor(0xf0, 0xc0, 0x80),
                values: pap_run,
            },
            Series {
                name: "paper FT".into(),
                color: PAPER,
                values: pap_ft,
            },
        ],
    )?;

    // CPU per request of the services.
    let cats: Vec<String> = service_keys.iter().map(|k| k.replace('/', "\n")).collect();
    let per = |label: &str, role: &str| -> Vec<Option<Stat>> {
        service_keys
            .iter()
            .map(|k| s.get(&format!("{k}/{label}/cpu/{role}")))
            .collect()
    };
    bars(
        &dir.join("results-cpu.svg"),
        "CPU per request: what each host pays",
        "CPU-µs per request",
        &cats,
        &[
            Series {
                name: "non-FT VMM".into(),
                color: OURS_2,
                values: per("run", "run"),
            },
            Series {
                name: "FT primary".into(),
                color: OURS,
                values: per("ft", "primary"),
            },
            Series {
                name: "FT backup".into(),
                color: BACKUP,
                values: per("ft", "backup"),
            },
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_render_with_and_without_data() {
        let dir = tempfile::tempdir().unwrap();
        all(dir.path(), &Samples::default()).unwrap();
        let mut s = Samples::default();
        for v in [1000.0, 1100.0] {
            s.push("kv/SET/run/rate", v);
            s.push("kv/SET/ft/rate", v * 0.8);
            s.push("net/rx/run/rate", v);
            s.push("net/rx/ft1g/rate", v / 2.0);
            s.push("kv/SET/ft/cpu/backup", 30.0);
        }
        all(dir.path(), &s).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("results-table1.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("paper"));
    }
}
