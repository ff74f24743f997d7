//! Every figure of the paper run as its repetitions: one value per round,
//! by a key such as `kv/SET/ft/rate`; the page shows the median with its
//! spread (the smallest and largest value).

use std::collections::BTreeMap;

use crate::report::median;

/// The values of one figure.
#[derive(Clone, Debug, PartialEq)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(v: &[f64]) -> Option<Stat> {
        let finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        if finite.is_empty() {
            return None;
        }
        Some(Stat {
            median: median(finite.clone()),
            min: finite.iter().copied().fold(f64::INFINITY, f64::min),
            max: finite.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            n: finite.len(),
        })
    }

    /// "median (min–max)" with `decimals` decimals.
    pub fn show(&self, decimals: usize) -> String {
        if self.n < 2 {
            return format!("{:.*}", decimals, self.median);
        }
        format!(
            "{:.*} ({:.*}–{:.*})",
            decimals, self.median, decimals, self.min, decimals, self.max
        )
    }
}

/// All figures of a run, by key.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    values: BTreeMap<String, Vec<f64>>,
}

impl Samples {
    pub fn push(&mut self, key: impl Into<String>, v: f64) {
        self.values.entry(key.into()).or_default().push(v);
    }

    pub fn get(&self, key: &str) -> Option<Stat> {
        self.values.get(key).and_then(|v| Stat::of(v))
    }

    /// The raw values of `key` (one per round).
    pub fn raw(&self, key: &str) -> &[f64] {
        self.values.get(key).map_or(&[], Vec::as_slice)
    }

    /// `get(key).show(decimals)`, or "—" if nothing was measured.
    pub fn show(&self, key: &str, decimals: usize) -> String {
        self.get(key)
            .map_or_else(|| "—".to_string(), |s| s.show(decimals))
    }

    /// The per-round ratio `a / b` (rounds paired in order: both were
    /// measured back to back), as a statistic.
    pub fn ratio(&self, a: &str, b: &str) -> Option<Stat> {
        let r: Vec<f64> = self
            .raw(a)
            .iter()
            .zip(self.raw(b))
            .filter(|(_, y)| **y > 0.0)
            .map(|(x, y)| x / y)
            .collect();
        Stat::of(&r)
    }

    /// Keys starting with `prefix`.
    pub fn keys_with(&self, prefix: &str) -> Vec<String> {
        self.values
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_spreads_and_paired_ratios() {
        let mut s = Samples::default();
        for (a, b) in [(10.0, 20.0), (12.0, 20.0), (9.0, 30.0)] {
            s.push("x/ft", a);
            s.push("x/run", b);
        }
        assert_eq!(s.show("x/ft", 0), "10 (9–12)");
        let r = s.ratio("x/ft", "x/run").unwrap();
        assert_eq!((r.min, r.median, r.max), (0.3, 0.5, 0.6));
        assert_eq!(s.show("missing", 1), "—");
        assert_eq!(Stat::of(&[f64::NAN]), None);
        assert_eq!(Stat::of(&[2.0]).unwrap().show(1), "2.0");
        assert_eq!(s.keys_with("x/"), vec!["x/ft", "x/run"]);
    }
}
