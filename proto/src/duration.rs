//! Durations written the way operators write them (`500ms`, `5s`, `2m`, `1h30m`), kept as
//! `std::time::Duration` and written back in the same form.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration parsed from a human string such as `5s`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| format!("invalid duration {s:?} ({e}); write e.g. 500ms, 5s, 2m"))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // humantime writes `1m 30s`; drop the spaces so it parses back as one token.
        let s = humantime::format_duration(self.0).to_string().replace(' ', "");
        f.write_str(&s)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        for (text, ms) in [("500ms", 500), ("5s", 5000), ("2m", 120_000), ("1m30s", 90_000)] {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.0, Duration::from_millis(ms), "{text}");
            let back: HumanDuration = d.to_string().parse().unwrap();
            assert_eq!(back, d);
        }
        assert!("5 parsecs".parse::<HumanDuration>().is_err());
        assert!("".parse::<HumanDuration>().is_err());
    }
}
