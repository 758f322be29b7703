//! Seconds, as both commands' duration flags take them (`--timeout 0.5`).

use std::time::Duration;

/// Seconds, more than zero, fractions allowed.
pub(crate) fn positive_secs(s: &str) -> Result<Duration, String> {
    match secs(s)? {
        d if d.is_zero() => Err("must be more than zero seconds".to_owned()),
        d => Ok(d),
    }
}

/// Seconds, zero or more, fractions allowed.
pub(crate) fn non_negative_secs(s: &str) -> Result<Duration, String> {
    secs(s)
}

/// Seconds, finite and not negative.
fn secs(s: &str) -> Result<Duration, String> {
    let secs = s
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|secs| !secs.is_nan())
        .ok_or_else(|| "not a number of seconds".to_owned())?;
    if secs < 0.0 {
        return Err("must not be negative".to_owned());
    }
    Duration::try_from_secs_f64(secs).map_err(|_| "too large a number of seconds".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds() {
        assert_eq!(positive_secs("0.2"), Ok(Duration::from_millis(200)));
        assert_eq!(non_negative_secs("0"), Ok(Duration::ZERO));
        for bad in ["0", "-1", "NaN", "inf", "1e400", "soon", ""] {
            assert!(positive_secs(bad).is_err(), "{bad} accepted");
        }
    }
}
