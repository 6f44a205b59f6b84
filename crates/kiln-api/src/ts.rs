//! Serde for timestamps: RFC 3339 UTC with exactly three fractional digits
//! (`2026-01-02T03:04:05.678Z`). Parsing accepts any RFC 3339 offset.

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serializer};

/// Formats a timestamp.
pub fn format(t: &DateTime<Utc>) -> String {
    match digits(t) {
        Some(buf) => String::from_utf8_lossy(&buf).into_owned(),
        None => t.to_rfc3339_opts(SecondsFormat::Millis, true),
    }
}

/// Serialises a timestamp.
pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    match digits(t) {
        Some(buf) => s.serialize_str(std::str::from_utf8(&buf).unwrap_or_default()),
        None => s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true)),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` written digit by digit into a stack buffer, for years 0–9999
/// (`None` otherwise: chrono formats those). Written by hand because a job read carries
/// five timestamps and a page of twenty a hundred: chrono's general formatter and the
/// `String` it returns were a visible part of a list's cost.
fn digits(t: &DateTime<Utc>) -> Option<[u8; 24]> {
    let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
    let millis = t.timestamp_subsec_millis().min(999);
    let mut buf = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut n: u32| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, t.month());
    put(8, 2, t.day());
    put(11, 2, t.hour());
    put(14, 2, t.minute());
    put(17, 2, t.second());
    put(20, 3, millis);
    Some(buf)
}

/// Deserialises a timestamp.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let raw = String::deserialize(d)?;
    DateTime::parse_from_rfc3339(&raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(serde::de::Error::custom)
}

/// The same for `Option`.
pub mod option {
    use super::*;

    /// Serialises an optional timestamp (`null` when absent).
    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    /// Deserialises an optional timestamp.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let raw = Option::<String>::deserialize(d)?;
        raw.map(|raw| {
            DateTime::parse_from_rfc3339(&raw)
                .map(|t| t.with_timezone(&Utc))
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_have_milliseconds_and_z() {
        let t = kiln_domain::clock::from_millis(1_767_323_045_678);
        assert_eq!(super::format(&t), "2026-01-02T03:04:05.678Z");
    }

    #[test]
    fn the_hand_written_format_matches_chrono_s() {
        use chrono::SecondsFormat;
        for ms in [
            0,
            1,
            999,
            951_782_400_000,     // 2000-02-29
            1_767_323_045_678,   // 2026
            253_402_300_799_999, // 9999-12-31T23:59:59.999
            -62_135_596_800_000, // year 1
        ] {
            let t = kiln_domain::clock::from_millis(ms);
            let chrono = t.to_rfc3339_opts(SecondsFormat::Millis, true);
            assert_eq!(super::format(&t), chrono, "{ms}");
            let json = serde_json::to_string(&Stamp(t)).unwrap();
            assert_eq!(json, format!("\"{chrono}\""));
        }
        // Past year 9999 chrono formats it.
        let far = kiln_domain::clock::from_millis(253_402_300_800_000);
        assert_eq!(
            super::format(&far),
            far.to_rfc3339_opts(SecondsFormat::Millis, true)
        );
    }

    #[derive(serde::Serialize)]
    struct Stamp(#[serde(with = "super")] chrono::DateTime<chrono::Utc>);
}
