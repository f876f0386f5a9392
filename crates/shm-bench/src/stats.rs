//! Medians, ranges and percentiles of repetition figures.

/// The median and range of a set of figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The middle figure (the mean of the two middle ones for an even count).
    pub median: f64,
    /// The smallest figure.
    pub min: f64,
    /// The largest figure.
    pub max: f64,
}

impl Summary {
    /// Summarises `xs`; `None` when it is empty or holds a NaN.
    ///
    /// # Examples
    ///
    /// ```
    /// let s = shm_bench::Summary::of(&[3.0, 1.0, 2.0]).unwrap();
    /// assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
    /// ```
    pub fn of(xs: &[f64]) -> Option<Summary> {
        if xs.is_empty() || xs.iter().any(|x| x.is_nan()) {
            return None;
        }
        let mut v = xs.to_vec();
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            f64::midpoint(v[mid - 1], v[mid])
        };
        Some(Summary {
            median,
            min: v[0],
            max: v[v.len() - 1],
        })
    }
}

/// The `p`-th quantile (`0.0..=1.0`, nearest rank below) of `xs`; `None`
/// when `xs` is empty. Sorts `xs`.
///
/// # Examples
///
/// ```
/// let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
/// assert_eq!(shm_bench::percentile(&mut v, 0.5), Some(3.0));
/// assert_eq!(shm_bench::percentile(&mut v, 1.0), Some(5.0));
/// ```
pub fn percentile(xs: &mut [f64], p: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let at = ((xs.len() - 1) as f64 * p.clamp(0.0, 1.0)) as usize;
    Some(xs[at])
}

/// The ratio `ours[i] / base[i]` of each repetition.
pub fn ratios(ours: &[f64], base: &[f64]) -> Vec<f64> {
    ours.iter().zip(base).map(|(o, b)| o / b).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn of_odd_count_takes_the_middle() {
        let sut = Summary::of(&[9.0, 1.0, 5.0, 7.0, 3.0]).unwrap();
        assert_eq!(
            sut,
            Summary {
                median: 5.0,
                min: 1.0,
                max: 9.0
            }
        );
    }

    #[test]
    fn of_even_count_averages_the_two_middle_figures() {
        let sut = Summary::of(&[4.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!(
            sut,
            Summary {
                median: 3.0,
                min: 1.0,
                max: 10.0
            }
        );
    }

    #[test]
    fn of_empty_or_nan_is_none() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn ratios_pair_repetitions() {
        assert_eq!(ratios(&[2.0, 9.0], &[1.0, 3.0]), vec![2.0, 3.0]);
    }

    #[test]
    fn percentile_picks_nearest_rank_below() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.99), Some(99.0));
        assert_eq!(percentile(&mut v, 0.0), Some(1.0));
        assert_eq!(percentile(&mut [], 0.5), None);
    }

    proptest! {
        #[test]
        fn summary_is_ordered_and_within_range(xs in proptest::collection::vec(-1e9f64..1e9, 1..50)) {
            let s = Summary::of(&xs).unwrap();
            prop_assert!(s.min <= s.median && s.median <= s.max);
            let below = xs.iter().filter(|&&x| x < s.median).count();
            let above = xs.iter().filter(|&&x| x > s.median).count();
            prop_assert!(below <= xs.len() / 2 && above <= xs.len() / 2);
        }
    }
}
