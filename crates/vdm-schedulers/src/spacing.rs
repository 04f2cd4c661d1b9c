//! Inference timestep spacings, computed as numpy does in diffusers' `set_timesteps`
//! (`round` is round-half-to-even, `linspace` sets its last element to `stop` exactly).

use vdm_core::{Error, Result};

use crate::options::TimestepSpacing;

/// `numpy.linspace(start, stop, num)` in `f64`.
pub fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (stop - start) / (num - 1) as f64;
            let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
            v[num - 1] = stop;
            v
        }
    }
}

/// `numpy.arange(start, 0, -step)` for a positive float `step`, in `f64`.
pub fn np_arange_down_to_zero(start: f64, step: f64) -> Vec<f64> {
    let len = (start / step).ceil().max(0.0) as usize;
    (0..len).map(|i| start - i as f64 * step).collect()
}

/// Checks `num_inference_steps` against the training range.
pub fn validate_steps(num_inference_steps: usize, num_train_timesteps: usize) -> Result<()> {
    if num_inference_steps == 0 {
        return Err(Error::invalid("num_inference_steps", "must be at least 1"));
    }
    if num_inference_steps > num_train_timesteps {
        return Err(Error::invalid(
            "num_inference_steps",
            format!(
                "{num_inference_steps} exceeds num_train_timesteps ({num_train_timesteps}): a \
                 model trained on {num_train_timesteps} timesteps cannot be sampled in more steps"
            ),
        ));
    }
    Ok(())
}

/// Integer timesteps of DDIM / DDPM (descending), exactly as their `set_timesteps`.
///
/// - `linspace`: `round(linspace(0, T − 1, N))` reversed;
/// - `leading`: `arange(N)·(T//N)` reversed, `+ steps_offset`;
/// - `trailing`: `round(arange(T, 0, −T/N)) − 1`.
pub fn discrete_timesteps(
    spacing: TimestepSpacing,
    num_inference_steps: usize,
    num_train_timesteps: usize,
    steps_offset: usize,
) -> Result<Vec<f64>> {
    validate_steps(num_inference_steps, num_train_timesteps)?;
    let t = num_train_timesteps;
    let n = num_inference_steps;
    let ts: Vec<f64> = match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (t - 1) as f64, n)
            .into_iter()
            .rev()
            .map(f64::round_ties_even)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = t / n;
            (0..n)
                .rev()
                .map(|i| (i * ratio + steps_offset) as f64)
                .collect()
        }
        // numpy's `arange(T, 0, −T/N)` can return N + 1 elements when T/N is inexact
        // (N = 227: the extra element rounds to timestep −1 in diffusers); we keep the first N.
        TimestepSpacing::Trailing => np_arange_down_to_zero(t as f64, t as f64 / n as f64)
            .into_iter()
            .take(n)
            .map(|x| x.round_ties_even() - 1.0)
            .collect(),
    };
    check_in_range(&ts, num_train_timesteps)?;
    Ok(ts)
}

/// Checks that timesteps lie in `0..num_train_timesteps` (a large `steps_offset` can push
/// leading timesteps past the end).
pub fn check_in_range(timesteps: &[f64], num_train_timesteps: usize) -> Result<()> {
    if let Some(bad) = timesteps
        .iter()
        .find(|&&t| !(t >= 0.0 && t <= (num_train_timesteps - 1) as f64))
    {
        return Err(Error::invalid(
            "steps_offset",
            format!(
                "timestep {bad} falls outside the training range 0..{num_train_timesteps}; \
                 reduce steps_offset or change timestep_spacing"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reference_spacings() {
        // shared/reference/algorithms.md §1.2 and shared/oracle gotcha 2.
        let lin = discrete_timesteps(TimestepSpacing::Linspace, 25, 1000, 1).unwrap();
        assert_eq!(
            lin,
            [
                999., 957., 916., 874., 832., 791., 749., 708., 666., 624., 583., 541., 500., 458.,
                416., 375., 333., 291., 250., 208., 166., 125., 83., 42., 0.
            ]
        );
        let lead = discrete_timesteps(TimestepSpacing::Leading, 50, 1000, 1).unwrap();
        assert_eq!(lead[0], 981.0);
        assert_eq!(lead[49], 1.0);
        let trail = discrete_timesteps(TimestepSpacing::Trailing, 25, 1000, 1).unwrap();
        assert_eq!(trail[0], 999.0);
        assert_eq!(trail[24], 39.0);
    }

    #[test]
    fn bad_step_counts() {
        let e = discrete_timesteps(TimestepSpacing::Leading, 0, 1000, 0).unwrap_err();
        assert!(e.to_string().contains("num_inference_steps"));
        let e = discrete_timesteps(TimestepSpacing::Leading, 1001, 1000, 0).unwrap_err();
        assert!(e.to_string().contains("num_inference_steps"));
    }

    proptest! {
        #[test]
        fn timesteps_strictly_decreasing_in_range(
            n in 1usize..=1000,
            spacing in prop_oneof![
                Just(TimestepSpacing::Leading),
                Just(TimestepSpacing::Trailing),
                Just(TimestepSpacing::Linspace)
            ],
            offset in 0usize..2,
        ) {
            let ts = discrete_timesteps(spacing, n, 1000, offset);
            // leading + offset can only overflow when the first step reaches T − 1.
            if let Ok(ts) = ts {
                prop_assert_eq!(ts.len(), n);
                for w in ts.windows(2) {
                    prop_assert!(w[1] < w[0]);
                }
                prop_assert!(ts.iter().all(|&t| (0.0..1000.0).contains(&t)));
            } else {
                prop_assert!(spacing == TimestepSpacing::Leading && offset > 0);
            }
        }
    }
}
