//! Small numeric helpers.

/// Fill non-finite values by linear interpolation (nearest finite value at the
/// ends), the same rule as the trace readers. False when there is no finite value
/// (an empty history included).
pub(crate) fn fill_gaps(v: &mut [f64]) -> bool {
    greenfill_core::fill_gaps(v);
    !v.is_empty() && v.iter().all(|x| x.is_finite())
}

/// The `q` quantile of `v` (nearest rank, at least the ⌈q·n⌉-th smallest), which
/// reorders `v`. `None` when empty.
pub(crate) fn quantile(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "q in (0,1), index < len")]
    let k = ((q * crate::len_f(v.len())).ceil() as usize).clamp(1, v.len()) - 1;
    let (_, x, _) = v.select_nth_unstable_by(k, f64::total_cmp);
    Some(*x)
}

/// Pinball (quantile) loss of bound `u` for actual `y` at quantile `q`.
pub(crate) fn pinball(y: f64, u: f64, q: f64) -> f64 {
    if y >= u { q * (y - u) } else { (1.0 - q) * (u - y) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_pinball() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.95), Some(95.0));
        assert_eq!(quantile(&mut [3.0], 0.5), Some(3.0));
        assert_eq!(quantile(&mut [], 0.5), None);
        assert!((pinball(10.0, 8.0, 0.95) - 1.9).abs() < 1e-12);
        assert!((pinball(8.0, 10.0, 0.95) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn gaps() {
        let mut v = [f64::NAN, 2.0, f64::NAN, 4.0, f64::NAN];
        assert!(fill_gaps(&mut v));
        assert_eq!(v, [2.0, 2.0, 3.0, 4.0, 4.0]);
        assert!(!fill_gaps(&mut [f64::NAN]));
        assert!(!fill_gaps(&mut []), "an empty history has no data");
    }
}
