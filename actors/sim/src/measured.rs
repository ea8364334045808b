//! Measured kernel times (a hardware file's optional `[kernels]` table): per kernel kind, the
//! real runtime's duration of one call against the rows it carries, as `troupe calibrate`
//! traces them on the machine it runs on. Where a kind has a curve the simulator uses it
//! instead of the roofline, as Vidur profiles operators instead of modelling them: a CPU's
//! few-row kernels do not follow a roofline (on the Xeon where this was written, two rows cost
//! 1.8× one row's attention and four rows hardly more than two: the kernels change path).
//!
//! Between measured row counts a curve is linear; above the largest it continues the last
//! segment's slope; below the smallest it scales down in proportion (fewer than one row in
//! expectation is a chance of one call). An `experts` curve is per call of one expert, against
//! the rows of the micro-batch it serves (what the runtime's trace records; the rows routed to
//! the expert grow with them).

use serde::{Deserialize, Serialize};

use crate::error::{Result, SimError};

/// One kind's measured call durations.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Curve {
    /// Rows per call, ascending.
    pub rows: Vec<f64>,
    /// Median duration of a call with that many rows (µs).
    pub us: Vec<f64>,
}

impl Curve {
    /// The duration (µs) of a call of `rows` rows (module doc).
    pub fn at(&self, rows: f64) -> f64 {
        let (r, t) = (&self.rows, &self.us);
        let n = r.len();
        if rows <= r[0] {
            return t[0] * (rows / r[0]).max(0.0);
        }
        if n == 1 {
            return t[0];
        }
        let i = r.partition_point(|&x| x < rows).clamp(1, n - 1);
        let slope = (t[i] - t[i - 1]) / (r[i] - r[i - 1]);
        (t[i - 1] + slope * (rows - r[i - 1])).max(0.0)
    }

    fn check(&self, field: &str, source_name: &str) -> Result<()> {
        let bad = |message: String| SimError::Hardware {
            source_name: source_name.to_string(),
            field: field.to_string(),
            message,
        };
        if self.rows.is_empty() || self.rows.len() != self.us.len() {
            return Err(bad(format!(
                "expected as many `us` as `rows` (at least one), found {} and {}",
                self.rows.len(),
                self.us.len()
            )));
        }
        if !self.rows.iter().all(|r| r.is_finite() && *r > 0.0)
            || !self.rows.windows(2).all(|w| w[0] < w[1])
        {
            return Err(bad(format!(
                "expected `rows` positive and ascending, found {:?}",
                self.rows
            )));
        }
        if !self
            .us
            .iter()
            .all(|t| t.is_finite() && *t >= 0.0 && *t < 1e9)
        {
            return Err(bad(format!(
                "expected `us` finite, ≥ 0 and below 1e9, found {:?}",
                self.us
            )));
        }
        Ok(())
    }
}

/// The kinds a step's kernels come in (the runtime's trace names).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KernelTimes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed: Option<Curve>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<Curve>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp: Option<Curve>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch: Option<Curve>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<Curve>,
    /// Per call of one expert, against the micro-batch's rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experts: Option<Curve>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combine: Option<Curve>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<Curve>,
}

impl KernelTimes {
    /// The curve of the kernel kind named `name` (a trace name), if measured.
    pub fn get(&self, name: &str) -> Option<&Curve> {
        self.all().into_iter().find(|(n, _)| *n == name)?.1
    }

    /// Sets the curve of kind `name`; false for a name that is not a kernel kind.
    pub fn set(&mut self, name: &str, curve: Curve) -> bool {
        match self.all_mut().into_iter().find(|(n, _)| *n == name) {
            Some((_, slot)) => {
                *slot = Some(curve);
                true
            }
            None => false,
        }
    }

    /// Multiplies every curve's time at `rows` rows (where it has a point there) by `factor`.
    pub fn scale_at(&mut self, rows: f64, factor: f64) {
        for (_, c) in self.all_mut() {
            for c in c.iter_mut() {
                for (r, t) in c.rows.iter().zip(c.us.iter_mut()) {
                    if *r == rows {
                        *t *= factor;
                    }
                }
            }
        }
    }

    fn all(&self) -> [(&'static str, Option<&Curve>); 8] {
        [
            ("embed", self.embed.as_ref()),
            ("attention", self.attention.as_ref()),
            ("mlp", self.mlp.as_ref()),
            ("dispatch", self.dispatch.as_ref()),
            ("shared", self.shared.as_ref()),
            ("experts", self.experts.as_ref()),
            ("combine", self.combine.as_ref()),
            ("head", self.head.as_ref()),
        ]
    }

    fn all_mut(&mut self) -> [(&'static str, &mut Option<Curve>); 8] {
        [
            ("embed", &mut self.embed),
            ("attention", &mut self.attention),
            ("mlp", &mut self.mlp),
            ("dispatch", &mut self.dispatch),
            ("shared", &mut self.shared),
            ("experts", &mut self.experts),
            ("combine", &mut self.combine),
            ("head", &mut self.head),
        ]
    }
}

/// A hardware file's `[kernels]` table.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MeasuredKernels {
    /// Cached positions per sequence when the times were measured: attention beyond (or short
    /// of) it adds (or saves) the roofline time of the difference.
    pub context: f64,
    pub times: KernelTimes,
}

impl MeasuredKernels {
    pub(crate) fn check(&self, source_name: &str) -> Result<()> {
        if !(self.context.is_finite() && self.context >= 0.0) {
            return Err(SimError::Hardware {
                source_name: source_name.to_string(),
                field: "kernels.context".into(),
                message: format!("expected a finite number ≥ 0, found {}", self.context),
            });
        }
        for (name, c) in self.times.all() {
            if let Some(c) = c {
                c.check(&format!("kernels.times.{name}"), source_name)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Hardware;

    fn curve(rows: &[f64], us: &[f64]) -> Curve {
        Curve {
            rows: rows.to_vec(),
            us: us.to_vec(),
        }
    }

    #[test]
    fn a_curve_interpolates_extends_its_last_slope_and_scales_below_its_first_point() {
        let c = curve(&[1.0, 2.0, 4.0, 8.0], &[500.0, 1000.0, 1100.0, 1500.0]);
        assert_eq!(c.at(1.0), 500.0);
        assert_eq!(c.at(1.5), 750.0);
        assert_eq!(c.at(3.0), 1050.0);
        assert_eq!(c.at(8.0), 1500.0);
        // Past the last point: 100 µs per row, as from 4 to 8.
        assert_eq!(c.at(12.0), 1900.0);
        // Below the first: a chance of a one-row call.
        assert_eq!(c.at(0.25), 125.0);
        assert_eq!(c.at(0.0), 0.0);
        let one = curve(&[1.0], &[40.0]);
        assert_eq!((one.at(0.5), one.at(1.0), one.at(3.0)), (20.0, 40.0, 40.0));
    }

    #[test]
    fn kernels_tables_parse_round_trip_and_bad_curves_are_named() {
        let text = Hardware::load("cpu").unwrap().to_toml()
            + "\n[kernels]\ncontext = 16.0\n\n[kernels.times.attention]\nrows = [1.0, 2.0]\nus = [500.0, 900.0]\n";
        let hw = Hardware::parse(&text, "k.toml").unwrap();
        let k = hw.kernels.as_ref().unwrap();
        assert_eq!(k.times.get("attention").unwrap().at(2.0), 900.0);
        assert!(k.times.get("head").is_none());
        assert_eq!(Hardware::parse(&hw.to_toml(), "round-trip").unwrap(), hw);
        for (from, to, field) in [
            (
                "rows = [1.0, 2.0]",
                "rows = [2.0, 1.0]",
                "kernels.times.attention",
            ),
            (
                "us = [500.0, 900.0]",
                "us = [500.0]",
                "kernels.times.attention",
            ),
            (
                "us = [500.0, 900.0]",
                "us = [500.0, -1.0]",
                "kernels.times.attention",
            ),
            ("context = 16.0", "context = -1.0", "kernels.context"),
        ] {
            let e = Hardware::parse(&text.replace(from, to), "bad.toml").unwrap_err();
            assert!(e.to_string().contains(field), "{e}");
        }
        let unknown = text.replace("kernels.times.attention", "kernels.times.bogus");
        let e = Hardware::parse(&unknown, "u.toml").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}
