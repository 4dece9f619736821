//! How rate limits and quotas cut time, which every edge and the control plane must compute
//! alike: fixed windows of the wall clock, or UTC calendar days and months.

const DAY_MS: u64 = 86_400_000;

/// How a limiter cuts time: into fixed windows, or UTC calendar days or months (quotas).
/// The same on every edge, since it is read from the limiter's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Window(u64),
    Day,
    Month,
}

/// How a limiter id names it: `<n>ms`, `day` or `month` (its first segment).
impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Period::Window(w) => write!(f, "{w}ms"),
            Period::Day => f.write_str("day"),
            Period::Month => f.write_str("month"),
        }
    }
}

impl Period {
    /// The period a limiter id names by its first segment: `<n>ms`, `day` or `month`.
    pub fn of(limiter: &str) -> Option<Period> {
        match limiter.split('/').next()? {
            "day" => Some(Period::Day),
            "month" => Some(Period::Month),
            w => w
                .strip_suffix("ms")?
                .parse()
                .ok()
                .filter(|w| *w > 0)
                .map(Period::Window),
        }
    }

    /// Which period `unix_ms` falls in: windows, days or months since 1970-01-01 UTC.
    pub fn index(self, unix_ms: u64) -> u64 {
        match self {
            Period::Window(w) => unix_ms / w,
            Period::Day => unix_ms / DAY_MS,
            Period::Month => {
                let (y, m) = year_month(unix_ms / DAY_MS);
                (y - 1970) * 12 + (m - 1)
            }
        }
    }

    /// Milliseconds from `unix_ms` to the end of its period.
    pub fn until_end(self, unix_ms: u64) -> u64 {
        match self {
            Period::Window(w) => w - unix_ms % w,
            Period::Day => DAY_MS - unix_ms % DAY_MS,
            Period::Month => {
                let i = self.index(unix_ms) + 1;
                let (y, m) = (1970 + i / 12, i % 12 + 1);
                days_from_civil(y, m) * DAY_MS - unix_ms
            }
        }
    }

    /// Whether counts of earlier periods are weighted in (sliding windows; a quota counts
    /// its current period only).
    pub fn slides(self) -> bool {
        matches!(self, Period::Window(_))
    }
}

/// (year, month 1-12) of a day count since 1970-01-01 (Howard Hinnant's civil calendar).
fn year_month(days: u64) -> (u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(m <= 2), m)
}

/// Days since 1970-01-01 of the first of month `m` (1-12) of year `y`.
fn days_from_civil(y: u64, m: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
