//! Human units in config values: durations (`"30s"`) and sizes (`"5MiB"`).

use std::time::Duration;

/// `"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"1d"`, or combinations like `"1m30s"`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return Err(format!(
                "invalid duration {s:?} (expected e.g. \"30s\", \"5m\", \"250ms\")"
            ));
        }
        let n: f64 = rest[..num_end]
            .parse()
            .map_err(|_| format!("invalid number in duration {s:?}"))?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            "d" => n * 86400.0,
            "" => return Err(format!("duration {s:?} needs a unit (ms, s, m, h, d)")),
            u => {
                return Err(format!(
                    "unknown duration unit {u:?} in {s:?} (use ms, s, m, h, d)"
                ));
            }
        };
        total += Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("duration {s:?} out of range"))?;
    }
    Ok(total)
}

/// `"512KiB"`, `"5MiB"`, `"1GiB"`, `"10MB"` (decimal), `"100B"` or a bare number of bytes.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let num_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    if num_end == 0 {
        return Err(format!(
            "invalid size {s:?} (expected e.g. \"512KiB\", \"5MiB\")"
        ));
    }
    let n: f64 = t[..num_end]
        .parse()
        .map_err(|_| format!("invalid number in size {s:?}"))?;
    let mult: f64 = match t[num_end..].trim() {
        "" | "B" | "b" => 1.0,
        "KiB" | "Ki" | "k" | "K" => 1024.0,
        "MiB" | "Mi" | "M" => 1024.0 * 1024.0,
        "GiB" | "Gi" | "G" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0f64.powi(4),
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        u => {
            return Err(format!(
                "unknown size unit {u:?} in {s:?} (use B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    let v = n * mult;
    if !v.is_finite() || v > u64::MAX as f64 {
        return Err(format!("size {s:?} out of range"));
    }
    Ok(v.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512KiB").unwrap(), 512 * 1024);
        assert_eq!(parse_size("5MiB").unwrap(), 5 * 1024 * 1024);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("5 furlongs").is_err());
        assert!(parse_size("MiB").is_err());
    }
}
