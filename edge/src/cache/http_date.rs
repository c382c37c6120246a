//! HTTP-date parsing as a robust recipient does it (RFC 9110 5.6.7).
//!
//! Senders must use the IMF-fixdate form, but recipients must accept all three forms (the
//! obsolete RFC 850 and asctime ones too), and a cache that rejects a date it could read
//! treats `Expires` as "already expired" and refetches for nothing. So, beyond the strict
//! `httpdate` crate (case-sensitive, and refusing a date whose weekday does not match):
//! - names of days and months and the `GMT` zone are matched case-insensitively;
//! - the weekday is checked to be a weekday name and otherwise ignored: the date says which
//!   day it is, and a wrong weekday is a sender's slip, not a different time;
//! - a two-digit RFC 850 year more than 50 years in the future is taken to be in the past
//!   century (RFC 9110 5.6.7).
//!
//! Anything else (a missing part, an hour of 24, the 31st of April, a date before 1970)
//! is `None`, which each caller treats as its rules say (an invalid `Expires` is in the past).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName};

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const LONG_DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// The time a header field's HTTP-date names, if it holds one.
pub fn header(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    parse(headers.get(name)?.to_str().ok()?)
}

/// Parses an HTTP-date in any of its three forms.
pub fn parse(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    if !text.is_ascii() {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    if let Some((day, rest)) = lower.split_once(", ") {
        if DAYS.contains(&day) {
            return imf_fixdate(rest);
        }
        if LONG_DAYS.contains(&day) {
            return rfc850(rest, SystemTime::now());
        }
        return None;
    }
    asctime(&lower)
}

/// `06 nov 1994 08:49:37 gmt` (after the weekday).
fn imf_fixdate(rest: &str) -> Option<SystemTime> {
    let mut parts = rest.split(' ');
    let day = number(parts.next()?, 2)?;
    let month = month(parts.next()?)?;
    let year = number(parts.next()?, 4)?;
    let time = parts.next()?;
    if parts.next()? != "gmt" || parts.next().is_some() {
        return None;
    }
    to_time(year, month, day, time)
}

/// `06-nov-94 08:49:37 gmt` (after the weekday).
fn rfc850(rest: &str, now: SystemTime) -> Option<SystemTime> {
    let (date, rest) = rest.split_once(' ')?;
    let (time, zone) = rest.split_once(' ')?;
    if zone != "gmt" {
        return None;
    }
    let mut parts = date.split('-');
    let day = number(parts.next()?, 2)?;
    let month = month(parts.next()?)?;
    let short_year = number(parts.next()?, 2)?;
    if parts.next().is_some() {
        return None;
    }
    let this_year = civil_year(now);
    let mut year = this_year - this_year % 100 + short_year;
    if year > this_year + 50 {
        year -= 100;
    }
    to_time(year, month, day, time)
}

/// `sun nov  6 08:49:37 1994`: the day of the month space-padded to two characters.
fn asctime(text: &str) -> Option<SystemTime> {
    let (weekday, rest) = text.split_once(' ')?;
    if !DAYS.contains(&weekday) {
        return None;
    }
    let (month_name, rest) = rest.split_once(' ')?;
    let month = month(month_name)?;
    let rest = rest.strip_prefix(' ').unwrap_or(rest);
    let (day, rest) = rest.split_once(' ')?;
    let day = match day.len() {
        1 | 2 => number(&format!("{day:0>2}"), 2)?,
        _ => return None,
    };
    let (time, year) = rest.split_once(' ')?;
    to_time(number(year, 4)?, month, day, time)
}

fn month(name: &str) -> Option<u64> {
    MONTHS.iter().position(|m| *m == name).map(|i| i as u64 + 1)
}

/// Exactly `digits` ASCII digits.
fn number(text: &str, digits: usize) -> Option<u64> {
    (text.len() == digits && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// `hh:mm:ss` on that day, UTC.
fn to_time(year: u64, month: u64, day: u64, time: &str) -> Option<SystemTime> {
    let mut hms = time.split(':');
    let hour = number(hms.next()?, 2)?;
    let minute = number(hms.next()?, 2)?;
    let second = number(hms.next()?, 2)?;
    if hms.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    if year < 1970 || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second.min(59);
    UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

fn is_leap(year: u64) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        _ => 28,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date on or after it (Howard Hinnant's
/// `days_from_civil`, for non-negative results only).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The UTC year of a time (for the RFC 850 century rule).
fn civil_year(time: SystemTime) -> u64 {
    let days = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    let mut year = 1970 + days / 366;
    while days_from_civil(year + 1, 1, 1) <= days {
        year += 1;
    }
    year
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> u64 {
        parse(text)
            .unwrap_or_else(|| panic!("{text:?} is a date"))
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    const NOV_6_1994: u64 = 784_111_777;

    #[test]
    fn the_three_forms_of_rfc_9110_name_the_same_instant() {
        assert_eq!(at("Sun, 06 Nov 1994 08:49:37 GMT"), NOV_6_1994);
        assert_eq!(at("Sunday, 06-Nov-94 08:49:37 GMT"), NOV_6_1994);
        assert_eq!(at("Sun Nov  6 08:49:37 1994"), NOV_6_1994);
        assert_eq!(at("Sun Nov 16 08:49:37 1994"), NOV_6_1994 + 10 * 86_400);
    }

    #[test]
    fn names_are_case_insensitive_and_a_wrong_weekday_is_ignored() {
        assert_eq!(at("SUN, 06 NOV 1994 08:49:37 gmt"), NOV_6_1994);
        assert_eq!(at("sunday, 06-nov-94 08:49:37 Gmt"), NOV_6_1994);
        assert_eq!(at("sUN nOV  6 08:49:37 1994"), NOV_6_1994);
        assert_eq!(at("Mon, 06 Nov 1994 08:49:37 GMT"), NOV_6_1994);
        assert_eq!(at("  Sun, 06 Nov 1994 08:49:37 GMT "), NOV_6_1994);
    }

    #[test]
    fn rfc_850_years_more_than_fifty_years_ahead_are_last_century() {
        let now = UNIX_EPOCH + Duration::from_secs(at("Sun, 06 Dec 2026 00:00:00 GMT"));
        let year = |text| civil_year(rfc850(text, now).unwrap());
        assert_eq!(year("06-nov-94 08:49:37 gmt"), 1994);
        assert_eq!(year("06-nov-76 08:49:37 gmt"), 2076);
        assert_eq!(year("06-nov-77 08:49:37 gmt"), 1977);
        assert_eq!(year("06-nov-30 08:49:37 gmt"), 2030);
    }

    #[test]
    fn dates_leap_years_and_the_end_of_time_of_day() {
        assert_eq!(at("Thu, 01 Jan 1970 00:00:00 GMT"), 0);
        assert_eq!(at("Thu, 29 Feb 2024 00:00:00 GMT"), 1_709_164_800);
        assert_eq!(at("Fri, 31 Dec 9999 23:59:59 GMT"), 253_402_300_799);
        assert_eq!(at("Wed, 31 Dec 2025 23:59:60 GMT"), 1_767_225_599);
    }

    #[test]
    fn anything_else_is_not_a_date() {
        for bad in [
            "",
            "0",
            "-1",
            "not a date",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 94 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 31 Apr 1994 08:49:37 GMT",
            "Thu, 29 Feb 2023 00:00:00 GMT",
            "Sun, 06 Nov 1969 08:49:37 GMT",
            "Xyz, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT extra",
            "Sun  Nov  6 08:49:37 1994",
            "Sun Nov  6 08:49:37",
            "Sun, 06 Nóv 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
