//! Numbers as people read them on a plot's axis or in a table: 300k rather than 300000.0, 1.5M,
//! 0.25, 12 (three significant digits at most, no trailing zeros).

/// `value` with a k / M / G suffix from a thousand up, three significant digits at most.
pub fn human(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    let sign = if value < 0.0 { "-" } else { "" };
    let v = value.abs();
    let (mantissa, suffix) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    format!("{sign}{}{suffix}", significant(mantissa))
}

/// Three significant digits (whole numbers from 100 up), trailing zeros dropped.
fn significant(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let decimals = (2 - v.log10().floor() as i32).clamp(0, 9) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn suffixes_and_significant_digits() {
        assert_eq!(human(300_000.0), "300k");
        assert_eq!(human(1_500_000.0), "1.5M");
        assert_eq!(human(12_345.0), "12.3k");
        assert_eq!(human(2_000_000_000.0), "2G");
        assert_eq!(human(1000.0), "1k");
        assert_eq!(human(999.0), "999");
        assert_eq!(human(12.0), "12");
        assert_eq!(human(2.5), "2.5");
        assert_eq!(human(1.126), "1.13");
        assert_eq!(human(0.25), "0.25");
        assert_eq!(human(0.0012), "0.0012");
        assert_eq!(human(0.0), "0");
        assert_eq!(human(-40_000.0), "-40k");
        assert_eq!(human(f64::NAN), "NaN");
    }
}
