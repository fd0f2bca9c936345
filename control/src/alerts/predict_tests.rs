use super::*;

/// A deterministic pseudo-random series in [-1, 1).
fn noise(n: usize, seed: u64) -> Vec<f64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

fn predictor() -> Predictor {
    Predictor::new(PredictSettings::default(), HashMap::new())
}

#[test]
fn exact_line_has_r2_one_and_the_right_crossing() {
    // 120 samples over the last 10 minutes, rising 1 ms/s, 400 ms now.
    let pts: Vec<(f64, f64)> = (0..120)
        .map(|i| {
            let x = -595.0 + 5.0 * i as f64;
            (x, 400.0 + x)
        })
        .collect();
    let f = fit(&pts).expect("fit");
    assert!((f.slope - 1.0).abs() < 1e-9, "{f:?}");
    assert!((f.intercept - 400.0).abs() < 1e-6, "{f:?}");
    assert!((f.r_squared - 1.0).abs() < 1e-9, "{f:?}");
    let p = predictor().judge(f, 1000.0).expect("prediction");
    assert!((p.seconds_to_threshold - 600.0).abs() < 1e-6, "{p:?}");
    assert!((p.current - 400.0).abs() < 1e-6);
    // Too far out: beyond the one-hour horizon.
    assert!(predictor().judge(f, 400.0 + 3700.0).is_none());
}

#[test]
fn noise_has_low_r2_and_no_prediction() {
    let pts: Vec<(f64, f64)> = noise(120, 7)
        .into_iter()
        .enumerate()
        .map(|(i, n)| (-595.0 + 5.0 * i as f64, 500.0 + 300.0 * n))
        .collect();
    let f = fit(&pts).expect("fit");
    assert!(f.r_squared < 0.2, "{f:?}");
    assert!(predictor().judge(f, 1000.0).is_none());
}

#[test]
fn noisy_trend_is_still_predicted() {
    let pts: Vec<(f64, f64)> = noise(120, 11)
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let x = -595.0 + 5.0 * i as f64;
            (x, 600.0 + 0.5 * x + 20.0 * n)
        })
        .collect();
    let f = fit(&pts).expect("fit");
    assert!(f.r_squared > 0.9, "{f:?}");
    let p = predictor().judge(f, 1000.0).expect("prediction");
    assert!((p.seconds_to_threshold - 800.0).abs() < 80.0, "{p:?}");
}

#[test]
fn flat_and_falling_series_predict_nothing() {
    let flat: Vec<(f64, f64)> = (0..60).map(|i| (i as f64, 250.0)).collect();
    let f = fit(&flat).expect("fit");
    assert_eq!(f.slope, 0.0);
    assert_eq!(f.r_squared, 0.0);
    assert!(predictor().judge(f, 1000.0).is_none());
    let falling: Vec<(f64, f64)> = (0..60).map(|i| (i as f64, 900.0 - i as f64)).collect();
    assert!(predictor()
        .judge(fit(&falling).expect("fit"), 1000.0)
        .is_none());
    // Already above the threshold: a condition, not a prediction.
    let above: Vec<(f64, f64)> = (0..60)
        .map(|i| (i as f64 - 60.0, 1100.0 + i as f64))
        .collect();
    assert!(predictor()
        .judge(fit(&above).expect("fit"), 1000.0)
        .is_none());
    assert!(fit(&[(1.0, 2.0)]).is_none());
    assert!(fit(&[(1.0, 2.0), (1.0, 3.0)]).is_none());
}

#[test]
fn short_data_is_not_extrapolated_far() {
    // 20 s of data rising 1 ms/s: a crossing 10 minutes out is too far.
    let pts: Vec<(f64, f64)> = (0..20)
        .map(|i| (i as f64 - 19.0, 400.0 + i as f64))
        .collect();
    let f = fit(&pts).expect("fit");
    assert!(predictor().judge(f, 1000.0).is_none());
    assert!(predictor().judge(f, 450.0).is_some());
}
