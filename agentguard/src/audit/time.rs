//! Time for records and the CLI: ns since the epoch, RFC 3339 (UTC) out,
//! `1h` / `30m` / RFC 3339 in. Small enough not to need a date crate.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `2025-05-01T12:00:00.123Z` (milliseconds, UTC).
pub fn rfc3339(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let ms = (ns / 1_000_000) % 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// `12:00:00.123` for tables (the date is in --json).
pub fn clock(ns: u64) -> String {
    rfc3339(ns)
        .split_once('T')
        .map(|(_, t)| t.trim_end_matches('Z').to_owned())
        .unwrap_or_default()
}

/// A point in time: a duration back from `now_ns` (`90s`, `15m`, `1h`,
/// `7d`) or an RFC 3339 timestamp.
pub fn parse_point(s: &str, now_ns: u64) -> Result<u64, String> {
    let s = s.trim();
    if let Some(d) = parse_duration(s) {
        return Ok(now_ns.saturating_sub(d));
    }
    parse_rfc3339(s).ok_or_else(|| {
        format!("`{s}`: want a duration back from now (30s, 15m, 1h, 7d) or RFC 3339 (2025-05-01T12:00:00Z)")
    })
}

/// `90s`, `15m`, `1h`, `7d` in nanoseconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "d" => 86_400_000_000_000,
        "w" => 7 * 86_400_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `YYYY-MM-DD[THH:MM[:SS[.frac]]](Z|±HH:MM)`; a date alone is midnight UTC.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let num = |x: &str| x.parse::<i64>().ok();
    let (date, rest) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, "Z"),
    };
    let mut dp = date.splitn(3, '-');
    let (y, mo, d) = (num(dp.next()?)?, num(dp.next()?)?, num(dp.next()?)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let (clock, offset) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, 0i64)
    } else {
        let i = rest.rfind(['+', '-'])?;
        let (c, off) = rest.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        (c, sign * (num(oh)? * 3600 + num(om)? * 60))
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut cp = hms.split(':');
    let h = cp.next().filter(|x| !x.is_empty()).map_or(Some(0), num)?;
    let mi = cp.next().map_or(Some(0), num)?;
    let sec = cp.next().map_or(Some(0), num)?;
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let frac_ns: i64 = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        num(&format!("{digits:0<9}"))?
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    u64::try_from(secs)
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(u64::try_from(frac_ns).ok()?)
}

// Howard Hinnant's algorithms (days since 1970-01-01 <-> civil date).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_offsets() {
        let t = parse_rfc3339("2025-05-01T12:34:56.789Z").expect("parses");
        assert_eq!(rfc3339(t), "2025-05-01T12:34:56.789Z");
        assert_eq!(parse_rfc3339("2025-05-01T14:34:56.789+02:00"), Some(t));
        assert_eq!(parse_rfc3339("1970-01-01"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z")
                .map(rfc3339)
                .as_deref(),
            Some("2024-02-29T00:00:00.000Z")
        );
        assert!(parse_rfc3339("2025-13-01T00:00:00Z").is_none());
        assert!(parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn durations_count_back_from_now() {
        let now = 10 * 3_600_000_000_000;
        assert_eq!(parse_point("1h", now), Ok(9 * 3_600_000_000_000));
        assert_eq!(parse_point("30m", now), Ok(now - 1_800_000_000_000));
        assert_eq!(parse_point("2d", now), Ok(0));
        assert!(parse_point("1y", now).is_err());
    }
}
