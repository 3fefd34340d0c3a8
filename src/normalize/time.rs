//! Event-time parsing: everything becomes UTC microseconds since the epoch.
//!
//! Producers send RFC 3339, ISO 8601 without a zone (read as UTC), epoch numbers in seconds,
//! milliseconds, microseconds or nanoseconds (told apart by magnitude), CEF's
//! `MMM dd yyyy HH:mm:ss` and BSD syslog's year-less `Mmm dd hh:mm:ss`.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeZone, Utc};

/// Earliest event time accepted: 1990-01-01. Anything older is a parsing mistake.
const MIN_TIME_US: i64 = 631_152_000_000_000;
/// Latest event time accepted: 2200-01-01.
const MAX_TIME_US: i64 = 7_258_118_400_000_000;

fn checked(us: i64) -> Option<i64> {
    (MIN_TIME_US..MAX_TIME_US).contains(&us).then_some(us)
}

/// Epoch number of unknown unit → microseconds.
pub fn from_epoch_number(value: f64) -> Option<i64> {
    if !value.is_finite() || value <= 0.0 {
        return None;
    }
    let us = if value < 1e11 {
        value * 1e6
    } else if value < 1e14 {
        value * 1e3
    } else if value < 1e17 {
        value
    } else {
        value / 1e3
    };
    checked(us as i64)
}

/// Parses a textual timestamp in any of the supported forms.
pub fn parse_text(text: &str) -> Option<i64> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(number) = text.parse::<f64>() {
        return from_epoch_number(number);
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
        return checked(dt.with_timezone(&Utc).timestamp_micros());
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f %z"] {
        if let Ok(dt) = DateTime::parse_from_str(text, format) {
            return checked(dt.with_timezone(&Utc).timestamp_micros());
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%b %d %Y %H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            return checked(naive.and_utc().timestamp_micros());
        }
    }
    // CEF `rt` with a trailing zone name (`Jan 12 2025 10:00:00 UTC`): read as UTC.
    if let Some((head, zone)) = text.rsplit_once(' ') {
        if zone.chars().all(|c| c.is_ascii_alphabetic()) && zone.len() <= 5 {
            if let Ok(naive) = NaiveDateTime::parse_from_str(head, "%b %d %Y %H:%M:%S%.f") {
                return checked(naive.and_utc().timestamp_micros());
            }
        }
    }
    None
}

/// BSD syslog time (`Oct  1 22:14:15`, no year). The year is the one that puts the time
/// closest to `now_us` without being more than a day in the future (handles New Year).
pub fn parse_bsd(text: &str, now_us: i64) -> Option<i64> {
    let now = Utc.timestamp_micros(now_us).single()?;
    let normalized: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for year in [now.year(), now.year() - 1] {
        let with_year = format!("{year} {normalized}");
        if let Ok(naive) = NaiveDateTime::parse_from_str(&with_year, "%Y %b %d %H:%M:%S%.f") {
            let us = naive.and_utc().timestamp_micros();
            if us <= now_us + 86_400_000_000 {
                return checked(us);
            }
        }
    }
    None
}

/// Midnight UTC of a date, for tests and generators.
pub fn date_us(year: i32, month: u32, day: u32) -> i64 {
    NaiveDate::from_ymd_opt(year, month, day)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|dt| dt.and_utc().timestamp_micros())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_736_676_000_000_000; // 2025-01-12T10:00:00Z

    #[test]
    fn parses_every_supported_form_to_the_same_instant() {
        for text in [
            "2025-01-12T10:00:00Z",
            "2025-01-12T11:00:00+01:00",
            "2025-01-12T10:00:00.000Z",
            "2025-01-12 10:00:00",
            "2025-01-12T10:00:00",
            "1736676000",
            "1736676000000",
            "1736676000000000",
            "1736676000000000000",
            "Jan 12 2025 10:00:00",
            "Jan 12 2025 10:00:00 UTC",
        ] {
            assert_eq!(parse_text(text), Some(T), "{text}");
        }
        assert_eq!(from_epoch_number(1736676000.5), Some(T + 500_000));
    }

    #[test]
    fn rejects_garbage_and_absurd_times() {
        for text in ["", "yesterday", "0", "-5", "9999-01-01T00:00:00Z", "1969-12-31T23:59:59Z"] {
            assert_eq!(parse_text(text), None, "{text}");
        }
    }

    #[test]
    fn bsd_time_takes_the_year_that_is_not_in_the_future() {
        let now = date_us(2025, 1, 2);
        assert_eq!(parse_bsd("Jan  1 00:00:00", now), Some(date_us(2025, 1, 1)));
        assert_eq!(parse_bsd("Dec 31 00:00:00", now), Some(date_us(2024, 12, 31)));
    }
}
