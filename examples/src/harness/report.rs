//! The harness's table: per case, each side's median time per round, the per-round ratios, peak
//! memory, and the achieved GFLOP/s against the measured matmul rate and the theoretical peak.

use std::collections::BTreeMap;

use super::{Case, Kind, Measured};
use crate::measure::median;

/// One round of one case: what each side measured, or why it did not.
#[derive(Debug, Clone)]
pub struct Round {
    /// The vdm side.
    pub vdm: Result<Measured, String>,
    /// The PyTorch side (`None`: not run).
    pub torch: Option<Result<Measured, String>>,
}

/// Every round of one case.
#[derive(Debug, Clone)]
pub struct CaseRounds {
    /// The case.
    pub case: Case,
    /// Its rounds, in order.
    pub rounds: Vec<Round>,
}

impl CaseRounds {
    fn medians(&self, side: impl Fn(&Round) -> Option<&Result<Measured, String>>) -> Vec<f64> {
        self.rounds
            .iter()
            .filter_map(|r| side(r)?.as_ref().ok())
            .map(|m| median(&m.times))
            .collect()
    }

    /// The median time of each round where vdm ran.
    pub fn vdm_medians(&self) -> Vec<f64> {
        self.medians(|r| Some(&r.vdm))
    }

    /// The median time of each round where PyTorch ran.
    pub fn torch_medians(&self) -> Vec<f64> {
        self.medians(|r| r.torch.as_ref())
    }

    /// vdm's time over PyTorch's, per round where both ran.
    pub fn ratios(&self) -> Vec<f64> {
        self.rounds
            .iter()
            .filter_map(|r| {
                let v = r.vdm.as_ref().ok()?;
                let t = r.torch.as_ref()?.as_ref().ok()?;
                Some(median(&v.times) / median(&t.times))
            })
            .collect()
    }

    /// The work of one run in GFLOP: counted by the PyTorch side in this run, else from
    /// `known` (an earlier run's counts), else analytic for the matmul.
    pub fn gflop(&self, known: &BTreeMap<String, f64>) -> Option<f64> {
        if let Kind::Gemm { n } = self.case.kind {
            return Some(2.0 * (n as f64).powi(3) / 1e9);
        }
        self.rounds
            .iter()
            .find_map(|r| r.torch.as_ref()?.as_ref().ok()?.gflop)
            .or_else(|| known.get(&self.case.name).copied())
    }

    fn peak(&self, side: impl Fn(&Round) -> Option<&Result<Measured, String>>) -> Option<f64> {
        self.rounds
            .iter()
            .filter_map(|r| side(r)?.as_ref().ok())
            .map(|m| m.peak_rss_mib)
            .reduce(f64::max)
    }
}

/// Three significant digits: `1.64 s`, `34.2 ms`, `5.60 ms`, `812 µs`.
pub fn seconds(s: f64) -> String {
    let (value, unit) = match s {
        s if s >= 1.0 => (s, "s"),
        s if s >= 1e-3 => (s * 1e3, "ms"),
        s => (s * 1e6, "µs"),
    };
    let decimals = match value {
        v if v >= 100.0 => 0,
        v if v >= 10.0 => 1,
        _ => 2,
    };
    format!("{value:.decimals$} {unit}")
}

fn list(v: &[f64], f: impl Fn(f64) -> String) -> String {
    if v.is_empty() {
        "–".into()
    } else {
        v.iter().map(|&x| f(x)).collect::<Vec<_>>().join(" / ")
    }
}

/// The best matmul rate measured in this run (either side), GFLOP/s.
pub fn gemm_rate(results: &[CaseRounds], known: &BTreeMap<String, f64>) -> Option<f64> {
    results
        .iter()
        .filter(|r| matches!(r.case.kind, Kind::Gemm { .. }))
        .filter_map(|r| {
            let g = r.gflop(known)?;
            let best = r
                .vdm_medians()
                .into_iter()
                .chain(r.torch_medians())
                .reduce(f64::min)?;
            Some(g / best)
        })
        .reduce(f64::max)
}

/// The markdown table of `results`; `peak` is the theoretical GFLOP/s of the machine.
pub fn table(results: &[CaseRounds], known: &BTreeMap<String, f64>, peak: f64) -> String {
    let gemm = gemm_rate(results, known);
    let mut out = String::from(
        "| case | GFLOP | vdm, per round | PyTorch, per round | vdm / PyTorch, per round | median ratio | peak RSS vdm / PyTorch (MiB) | vdm GFLOP/s | PyTorch GFLOP/s | vdm % of GEMM | vdm % of peak |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        let (v, t, ratios) = (r.vdm_medians(), r.torch_medians(), r.ratios());
        let g = r.gflop(known);
        let rate = |m: &[f64]| match (g, m.is_empty()) {
            (Some(g), false) => Some(g / median(m)),
            _ => None,
        };
        let (vr, tr) = (rate(&v), rate(&t));
        let opt = |x: Option<f64>, f: &dyn Fn(f64) -> String| x.map_or("–".into(), f);
        let mib = |x: Option<f64>| opt(x, &|m| format!("{m:.0}"));
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} |\n",
            r.case.name,
            opt(g, &|g| format!("{g:.1}")),
            list(&v, seconds),
            list(&t, seconds),
            list(&ratios, |x| format!("{x:.2}×")),
            if ratios.is_empty() {
                "–".into()
            } else {
                format!("**{:.2}×**", median(&ratios))
            },
            mib(r.peak(|x| Some(&x.vdm))),
            mib(r.peak(|x| x.torch.as_ref())),
            opt(vr, &|x| format!("{x:.1}")),
            opt(tr, &|x| format!("{x:.1}")),
            opt(vr.zip(gemm).map(|(v, g)| 100.0 * v / g), &|x| format!(
                "{x:.0} %"
            )),
            opt(vr, &|x| format!("{:.0} %", 100.0 * x / peak)),
        ));
    }
    out
}

/// The failures of `results`, one line each (side, case, round, reason).
pub fn failures(results: &[CaseRounds]) -> Vec<String> {
    let mut lines = Vec::new();
    for r in results {
        for (i, round) in r.rounds.iter().enumerate() {
            if let Err(e) = &round.vdm {
                lines.push(format!("vdm, {}, round {}: {e}", r.case.name, i + 1));
            }
            if let Some(Err(e)) = &round.torch {
                lines.push(format!("PyTorch, {}, round {}: {e}", r.case.name, i + 1));
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::cases;

    fn measured(times: &[f64], gflop: Option<f64>, rss: f64) -> Measured {
        Measured {
            times: times.to_vec(),
            gflop,
            peak_rss_mib: rss,
        }
    }

    #[test]
    fn ratios_rates_and_missing_sides() {
        let all = cases();
        let unet = all.iter().find(|c| c.name == "unet3d bench F16").unwrap();
        let gemm = all.iter().find(|c| c.name == "gemm 1024").unwrap();
        let results = vec![
            CaseRounds {
                case: unet.clone(),
                rounds: vec![
                    Round {
                        vdm: Ok(measured(&[1.6, 1.7, 1.8], None, 400.0)),
                        torch: Some(Ok(measured(&[2.0, 2.0, 2.1], Some(256.0), 1365.0))),
                    },
                    Round {
                        vdm: Ok(measured(&[1.5, 1.5, 1.5], None, 410.0)),
                        torch: Some(Err("killed".into())),
                    },
                ],
            },
            CaseRounds {
                case: gemm.clone(),
                rounds: vec![Round {
                    vdm: Ok(measured(&[0.02], None, 50.0)),
                    torch: Some(Ok(measured(&[0.01], None, 300.0))),
                }],
            },
        ];
        let r = &results[0];
        assert_eq!(r.vdm_medians(), vec![1.7, 1.5]);
        assert_eq!(r.torch_medians(), vec![2.0]);
        assert_eq!(r.ratios(), vec![1.7 / 2.0]);
        let known = BTreeMap::new();
        assert_eq!(r.gflop(&known), Some(256.0));
        // 2·1024³ FLOP in 10 ms: the faster side sets the rate
        let rate = gemm_rate(&results, &known).unwrap();
        assert!((rate - 214.75).abs() < 0.01, "{rate}");
        let t = table(&results, &known, 300.0);
        assert!(t.contains("| unet3d bench F16 | 256.0 | 1.70 s / 1.50 s | 2.00 s | 0.85× | **0.85×** | 410 / 1365 | 160.0 | 128.0 | 75 % | 53 % |"), "{t}");
        assert_eq!(
            failures(&results),
            vec!["PyTorch, unet3d bench F16, round 2: killed"]
        );
        // Without the PyTorch side the counts come from an earlier run.
        let alone = CaseRounds {
            case: unet.clone(),
            rounds: vec![Round {
                vdm: Ok(measured(&[2.0], None, 400.0)),
                torch: None,
            }],
        };
        let known = BTreeMap::from([("unet3d bench F16".to_string(), 250.0)]);
        assert_eq!(alone.gflop(&known), Some(250.0));
        assert!(alone.ratios().is_empty());
    }

    #[test]
    fn seconds_read_well() {
        assert_eq!(seconds(1.6449), "1.64 s");
        assert_eq!(seconds(0.0342), "34.2 ms");
        assert_eq!(seconds(0.0056), "5.60 ms");
        assert_eq!(seconds(0.000812), "812 µs");
        assert_eq!(seconds(12.345), "12.3 s");
    }
}
